"""Validate a candidate copy of the rendered files before it may go live.

The candidate dir mirrors the layout (C/etc/postfix/main.cf, ...). Maps are referenced through
$config_directory, so Postfix tools validate the candidate in place. Each step's failure rule
comes from what the tools actually report (see mailstack.md, "Validation before reload"):
exit codes alone miss most faults, so warnings count as failures. A step whose binary is not
installed is skipped and the log says so.
"""

import os
import re
import shutil
import subprocess
import tempfile
from pathlib import Path

import msgspec

from workers.reconcile.layout import (
    CIDR_MAPS,
    DOVECOT_CONF,
    KEY_TABLE,
    MAPS,
    OPENDKIM_CONF,
    OPENDKIM_DIR,
    PASSWD,
    POSTFIX_DIR,
    TLS_DIR,
    Layout,
)

SEARCH_PATH = os.pathsep.join(
    [os.environ.get("PATH", ""), "/usr/sbin", "/usr/bin", "/sbin", "/bin"]
)
POSTFIX_DAEMON_DIR = Path("/usr/lib/postfix/sbin")
DOVECOT_MODULES = Path("/usr/lib/dovecot/modules")
STEP_TIMEOUT_S = 30.0
# Schemes this Dovecot build verifies when `doveadm pw -l` cannot be asked.
KNOWN_SCHEMES = frozenset({"ARGON2ID", "ARGON2I", "BLF-CRYPT", "SHA512-CRYPT", "SHA256-CRYPT"})
_MAP_TYPES = "texthash|hash|btree|lmdb|cdb|cidr|regexp|pcre|inline"
_MAP_SPEC = re.compile(rf"\b({_MAP_TYPES}):(\S+?)(?=[,\s]|$)")


class Report(msgspec.Struct, kw_only=True):
    """Outcome of validate/apply. `step` names the failing step (or the last one run);
    `changed` maps each changed file to the sha256 of its new content."""

    ok: bool
    step: str
    log: list[str] = msgspec.field(default_factory=list)
    changed: dict[str, str] = msgspec.field(default_factory=dict)
    daemons: list[str] = msgspec.field(default_factory=list)


class StepFailed(Exception):
    def __init__(self, step: str, message: str) -> None:
        super().__init__(message)
        self.step = step


def which(name: str) -> str | None:
    return shutil.which(name, path=SEARCH_PATH)


def _run(
    argv: list[str], env: dict[str, str] | None = None, stdin: bytes | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        argv,
        input=stdin.decode() if stdin is not None else None,
        capture_output=True,
        text=True,
        env=env,
        timeout=STEP_TIMEOUT_S,
        stdin=None if stdin is not None else subprocess.DEVNULL,
        check=False,
    )


def _tail(text: str, lines: int = 8) -> str:
    """The tool's complaints first (warning/error/fatal lines), else its last lines."""
    all_lines = text.strip().splitlines()
    loud = [ln for ln in all_lines if re.search(r"warning|error|fatal", ln, re.I)]
    return " | ".join((loud or all_lines)[-lines:])


class _Validator:
    def __init__(self, candidate: Path, layout: Layout) -> None:
        self.candidate = candidate
        self.layout = layout
        self.log: list[str] = []
        self.step = "start"

    def skip(self, step: str, binary: str) -> None:
        self.log.append(f"{step}: skipped, {binary} is not installed")

    def fail(self, message: str) -> StepFailed:
        self.log.append(f"{self.step}: FAILED: {message}")
        return StepFailed(self.step, message)

    def passed(self, detail: str = "ok") -> None:
        self.log.append(f"{self.step}: {detail}")

    # ---- Postfix -----------------------------------------------------------------------

    def postfix(self) -> None:
        conf = self.candidate / POSTFIX_DIR
        postconf = which("postconf")
        if postconf is None:
            self.skip("postfix", "postconf")
            return
        self.step = "postconf -n"
        out = _run([postconf, "-c", str(conf), "-n"])
        if out.returncode != 0 or re.search(r"warning|fatal", out.stderr, re.I):
            raise self.fail(_tail(out.stderr) or f"rc {out.returncode}")
        self.passed()
        self.step = "postconf -M"
        out = _run([postconf, "-c", str(conf), "-M"])
        if out.returncode != 0 or out.stderr.strip():
            raise self.fail(_tail(out.stderr) or f"rc {out.returncode}")
        self.passed()
        self.step = "postmap"
        postmap = which("postmap")
        if postmap is None:
            self.skip("postmap", "postmap")
        else:
            for spec in self._map_specs(postconf, conf):
                if spec.startswith(("cidr:", "regexp:", "pcre:")):
                    # No sequence operation: a lookup parses every line (rc 1 = not found).
                    out = _run([postmap, "-c", str(conf), "-q", "0.0.0.0", spec])
                    if out.returncode not in (0, 1) or out.stderr.strip():
                        raise self.fail(f"{spec}: {_tail(out.stderr) or f'rc {out.returncode}'}")
                    continue
                out = _run([postmap, "-c", str(conf), "-s", spec])
                if out.returncode != 0 or out.stderr.strip():
                    raise self.fail(f"{spec}: {_tail(out.stderr) or f'rc {out.returncode}'}")
            self.passed("ok")
        self.step = "smtpd -S"
        smtpd = POSTFIX_DAEMON_DIR / "smtpd"
        if not smtpd.exists():
            self.skip("smtpd -S", str(smtpd))
            return
        # Catches bad parameter values that every static check lets through. Daemons ignore
        # -c (MAIL_CONFIG instead) and chdir to queue_directory, so it gets a scratch one:
        # the live queue may not exist yet; a short one in the system tmp dir, since smtpd
        # connects to QUEUE/public/postlog (a unix socket path, at most 107 bytes). Its reason
        # for refusing goes only to a postlogd or syslog, so the log cannot say more.
        env = {"PATH": SEARCH_PATH, "MAIL_CONFIG": str(conf)}
        extra = []
        for line in (conf / "main.cf").read_text().splitlines():
            if line.startswith("smtpd_tls_chain_files = "):  # the candidate's, not live files
                extra = ["-o", self._staged_tls(line.partition(" = ")[2]).replace(" ", "")]
                extra[1] = "smtpd_tls_chain_files=" + extra[1]
        with tempfile.TemporaryDirectory(prefix="mailpanel-probe-") as probe:
            out = _run(
                [str(smtpd), "-S", "-o", f"queue_directory={probe}", *extra],
                env=env,
                stdin=b"EHLO validate\r\nQUIT\r\n",
            )
        if out.returncode != 0 or "221" not in out.stdout:
            raise self.fail(
                f"stand-alone smtpd refused the config (rc {out.returncode}): usually a bad "
                f"parameter value. {_tail(out.stdout + out.stderr)}".strip()
            )
        self.passed()

    def _staged_tls(self, text: str) -> str:
        """`text` with the live TLS dir pointing at the candidate's copy."""
        live = str(self.layout.tls_dir) + "/"
        return text.replace(live, str(self.candidate / TLS_DIR) + "/")

    def _map_specs(self, postconf: str, conf: Path) -> list[str]:
        """Every map main.cf refers to (expanded), plus every rendered map file."""
        out = _run([postconf, "-c", str(conf), "-nx"])
        specs = [f"{kind}:{where}" for kind, where in _MAP_SPEC.findall(out.stdout)]
        specs += [f"texthash:{conf / name}" for name in MAPS if (conf / name).exists()]
        specs += [f"cidr:{conf / name}" for name in CIDR_MAPS if (conf / name).exists()]
        return list(dict.fromkeys(specs))

    # ---- Dovecot -----------------------------------------------------------------------

    def dovecot(self) -> None:
        conf = self.candidate / DOVECOT_CONF
        self.step = "passwd-file"
        self.passwd_file()
        doveconf = which("doveconf")
        if doveconf is None:
            self.skip("doveconf -n", "doveconf")
            return
        self.step = "doveconf -n"
        # ssl_cert = <file is read while parsing: check a copy naming the candidate's files.
        probe = conf.with_name(conf.name + ".probe")
        probe.write_text(self._staged_tls(conf.read_text()))
        try:
            out = _run([doveconf, "-c", str(probe), "-n"])
        finally:
            probe.unlink()
        if out.returncode != 0 or re.search(r"warning", out.stdout + out.stderr, re.I):
            raise self.fail(_tail(out.stderr + out.stdout) or f"rc {out.returncode}")
        self.passed()
        self.step = "dovecot plugins"
        for plugin in self._plugins(out.stdout):
            if not list(DOVECOT_MODULES.glob(f"lib*_{plugin}_plugin.so")):
                raise self.fail(f"mail plugin {plugin!r} is not installed")
        self.passed()

    @staticmethod
    def _plugins(doveconf_n: str) -> set[str]:
        plugins: set[str] = set()
        for line in doveconf_n.splitlines():
            key, _, value = line.strip().partition("=")
            if key.strip() == "mail_plugins":
                words = value.replace('"', " ").split()
                plugins.update(p for p in words if not p.startswith("$"))
        return plugins

    def passwd_file(self) -> None:
        passwd = self.candidate / PASSWD
        if not passwd.exists():
            raise self.fail("passwd-file is missing")
        schemes = self._schemes()
        mail_root = str(self.layout.mail_root)
        for number, line in enumerate(passwd.read_text().splitlines(), 1):
            if not line or line.startswith("#"):
                continue
            if line.count(":") < 7:
                raise self.fail(f"line {number}: fewer than 7 colons")
            user, password, uid, gid, _gecos, home, _shell = line.split(":", 7)[:7]
            match = re.match(r"^\{([A-Z0-9.-]+)\}", password)
            if match is None or match.group(1) not in schemes:
                raise self.fail(f"line {number} ({user}): unknown or missing password scheme")
            if (uid, gid) != (str(self.layout.vmail_uid), str(self.layout.vmail_gid)):
                raise self.fail(f"line {number} ({user}): uid/gid is not the vmail user")
            if not home.startswith(mail_root + "/"):
                raise self.fail(f"line {number} ({user}): home outside the mail root")
        self.passed()

    @staticmethod
    def _schemes() -> frozenset[str]:
        doveadm = which("doveadm")
        if doveadm is None:
            return KNOWN_SCHEMES
        out = _run([doveadm, "pw", "-l"])
        listed = frozenset(out.stdout.split())
        return listed if out.returncode == 0 and listed else KNOWN_SCHEMES

    # ---- OpenDKIM ----------------------------------------------------------------------

    def opendkim(self) -> None:
        self.step = "opendkim -n"
        opendkim = which("opendkim")
        if opendkim is None:
            self.skip("opendkim -n", "opendkim")
        else:
            # opendkim -n opens the tables it names (live paths, maybe not there yet): check a
            # copy that names the candidate's tables instead.
            live_dir = str(self.layout.opendkim_dir) + "/"
            text = (self.candidate / OPENDKIM_CONF).read_text()
            probe = self.candidate / (OPENDKIM_CONF + ".probe")
            probe.write_text(text.replace(live_dir, str(self.candidate / OPENDKIM_DIR) + "/"))
            try:
                out = _run([opendkim, "-n", "-x", str(probe)])
            finally:
                probe.unlink()
            if out.returncode != 0:
                raise self.fail(_tail(out.stderr + out.stdout) or f"rc {out.returncode}")
            self.passed()
        self.step = "dkim keys"
        table = self.candidate / KEY_TABLE
        openssl = which("openssl")
        for line in table.read_text().splitlines() if table.exists() else []:
            if not line.strip() or line.startswith("#"):
                continue
            key_path = line.split(None, 1)[1].split(":", 2)[2]
            # A key is checked where it will be live; a candidate copy wins if there is one.
            live = Path(key_path)
            key = live
            staged = self.layout.staged(live, self.candidate)
            if staged is not None and staged.exists():
                key = staged
            if not key.exists():
                raise self.fail(f"key {key_path} does not exist")
            if openssl is not None:
                out = _run([openssl, "pkey", "-noout", "-in", str(key)])
                if out.returncode != 0:
                    raise self.fail(f"key {key_path} does not parse: {_tail(out.stderr)}")
        self.passed()


def validate_candidate(candidate_dir: Path, layout: Layout) -> Report:
    """Run every check on the candidate; the first failure stops and names its step."""
    v = _Validator(Path(candidate_dir), layout)
    try:
        v.postfix()
        v.dovecot()
        v.opendkim()
    except StepFailed as exc:
        return Report(ok=False, step=exc.step, log=v.log)
    except (OSError, subprocess.SubprocessError) as exc:
        v.log.append(f"{v.step}: ERROR: {exc}")
        return Report(ok=False, step=v.step, log=v.log)
    return Report(ok=True, step="validated", log=v.log)
