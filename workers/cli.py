"""The `mailpanel` command."""

import argparse
import logging
import os

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
        ("reconcile", "run only the reconcile agent (for a mail host; needs MAILPANEL_NATS_URL)"),
        ("rebuild", "drop the read model and replay it from the log"),
    ):
        p = sub.add_parser(name, help=text, description=text)
        p.add_argument("--data-dir", default=None, help="data directory (default ./var)")
        if name == "serve":
            p.add_argument("--listen", default=None, help="HOST:PORT (default 127.0.0.1:8080)")
        if name in ("serve", "reconcile"):
            p.add_argument(
                "--mailstack",
                default=None,
                choices=("sandbox", "system", "none", "off"),
                help="the mail stack the agent drives (default: sandbox when "
                "Postfix and Dovecot are installed and we are root, else none)",
            )
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    logging.getLogger("nats").setLevel(logging.WARNING)
    env = dict(os.environ)
    if getattr(args, "mailstack", None):
        env["MAILPANEL_MAILSTACK"] = args.mailstack
    settings = load_settings(args.data_dir, getattr(args, "listen", None), env=env)

    from workers import serve as lifecycle

    if args.command == "serve":
        lifecycle.serve(settings)
    elif args.command == "project":
        lifecycle.project(settings)
    elif args.command == "reconcile":
        if not settings.mailstack:
            raise SystemExit("mailpanel: reconcile needs a mail stack mode (sandbox or none)")
        lifecycle.reconcile(settings)
    else:
        lifecycle.rebuild_read_model(settings)


if __name__ == "__main__":
    main()
