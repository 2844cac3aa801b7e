"""The `mailpanel` command."""

import argparse
import logging

from workers.config import load_settings


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="mailpanel", description="mail-server control plane")
    sub = parser.add_subparsers(dest="command", required=True)
    for name, text in (
        (
            "serve",
            "run the API and the projector (and an embedded nats-server unless "
            "MAILPANEL_NATS_URL is set)",
        ),
        ("project", "run only the projector for DIR/read.db"),
        ("rebuild", "drop the read model and replay it from the log"),
    ):
        p = sub.add_parser(name, help=text, description=text)
        p.add_argument("--data-dir", default=None, help="data directory (default ./var)")
        if name == "serve":
            p.add_argument("--listen", default=None, help="HOST:PORT (default 127.0.0.1:8080)")
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    logging.getLogger("nats").setLevel(logging.WARNING)
    settings = load_settings(args.data_dir, getattr(args, "listen", None))

    from workers import serve as lifecycle

    if args.command == "serve":
        lifecycle.serve(settings)
    elif args.command == "project":
        lifecycle.project(settings)
    else:
        lifecycle.rebuild_read_model(settings)


if __name__ == "__main__":
    main()
