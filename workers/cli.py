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
        ("export", "write the whole event log to a file as NDJSON (a backup)"),
        ("import", "load an export into an empty event log (disaster recovery)"),
        ("verify", "check that the event log is contiguous, decodes and is append-only"),
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
        if name == "export":
            p.add_argument("--out", required=True, metavar="FILE", help="the file ('-': stdout)")
        if name == "import":
            p.add_argument(
                "--in", dest="inp", required=True, metavar="FILE", help="the file ('-': stdin)"
            )
            p.add_argument(
                "--until",
                default=None,
                metavar="SEQ|TIME",
                help="stop after this sequence, or before the first event stored later than "
                "this RFC 3339 time (point-in-time recovery)",
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

    from workers import export_cli
    from workers import serve as lifecycle

    if args.command == "serve":
        lifecycle.serve(settings)
    elif args.command == "project":
        lifecycle.project(settings)
    elif args.command == "reconcile":
        if not settings.mailstack:
            raise SystemExit("mailpanel: reconcile needs a mail stack mode (sandbox or none)")
        lifecycle.reconcile(settings)
    elif args.command == "export":
        export_cli.export_command(settings, args.out)
    elif args.command == "import":
        export_cli.import_command(settings, args.inp, args.until)
    elif args.command == "verify":
        if not export_cli.verify_command(settings):
            raise SystemExit(1)
    else:
        export_cli.rebuild_command(settings)


if __name__ == "__main__":
    main()
