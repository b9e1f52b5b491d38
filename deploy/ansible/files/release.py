#!/usr/bin/env python3
"""One release of an app on this server, from unpacked archive to serving, in one call.

deploy.yml sends the release's archive, then runs this program (``python3 -c`` with its text):

    release.py deploy           stdin: {"spec": {...}, "env": the .env's text, "tools": {name:
                                text}} (the scripts it keeps in the app's directory, itself among
                                them); prints one JSON line, the outcome

and undeploy.yml runs ``release.py forget SPEC`` from the app's directory (its routes leave the
edge). The standard library only: it runs with the server's python3, as Ansible's modules do.
One deploy of an app runs at a time (a lock in its directory); a run whose SSH session ended (its
controller was cancelled or killed) stops what it started before the switch, and a retry that
finds its release serving already, healthy and routed as asked, touches nothing.

An app that serves a port sits behind the server's edge, a Caddy of its own under
``<apps root>/.edge`` (started here when it is not running; ``caddy`` comes with provisioning):
the app's port on the server and its HTTPS names are the edge's, and each release listens on one
of the app's two internal slots, ``blue`` and ``green`` (loopback ports chosen here once, kept in
``edge/slots.json``). A new release starts on the slot that does not serve, is health checked
there directly, and only then does the edge send requests to it: its route picks the slot per
request by whether ``edge/serving-blue`` exists, so the switch is one atomic file operation, with
no proxy reload. The previous release drains (the edge counts its requests in flight) and stops.
Caddy is reloaded only when the app's site changes (its first deploy, a new port or name): a
reload can reset a connection that arrives at that instant, a marker flip cannot.

An app with no port (a bot, a worker) takes its previous release's place: that one stops before
it starts (two pollers of one bot would take each other's updates) and starts again if it fails.

An app with a database (the spec's ``database``: the variable of its .env whose
``postgresql://`` URL names its role, password and database) gets them in the server's PostgreSQL
cluster, one for every app under the apps root (class Database), before its release command (the
spec's ``release_command``, e.g. its migrations) runs once in the release's directory; both come
before the release starts, so a failure leaves what serves serving. ``forget`` with ``drop_data``
drops the app's database and role; without, they stay for the app's next deploy.

Failures are outcomes, not tracebacks: ``{"ok": false, "kind": ..., "message": ...}`` with kind
``port_busy``, ``deps``, ``database``, ``release_command``, ``health``, ``edge`` or
``cancelled``; the message says what a person can act on.
"""

from __future__ import annotations

import base64
import contextlib
import fcntl
import hashlib
import json
import os
import pwd
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tarfile
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

SLOTS = ("blue", "green")
MARKER = "serving-blue"  # in the app's edge/: present while the blue slot serves
DRAIN_QUIET_S = 0.2  # no request in flight to the old slot for this long: it has drained
BOT_API = "https://api.telegram.org"
# PostgreSQL does not run as root: a root SSH user's clusters live here, run by the postgres user.
ROOT_CLUSTERS = Path("/var/lib/postgresql/orchestrator")
PG_USER = "postgres"
DB_NAME = re.compile(r"^[a-z_][a-z0-9_]{0,62}$")
# The characters a URL carries unescaped and a SQL string literal holds without quoting.
DB_PASSWORD = re.compile(r"^[A-Za-z0-9._~-]+$")
# Names an app may not take: the cluster's own databases and the superuser.
RESERVED_DATABASES = ("postgres", "template0", "template1")
READY_S = 30.0
RELEASE_COMMAND_S = 1800.0
BUILD_S = 1800.0


class Refused(Exception):
    """A release that cannot serve, and why; ``url``: the health check's, when one failed."""

    def __init__(self, kind: str, message: str, url: str = "") -> None:
        super().__init__(message)
        self.kind = kind
        self.url = url


# --- the release's files and processes ----------------------------------------------------------


class App:
    def __init__(self, spec: dict[str, Any]) -> None:
        self.spec = spec
        self.root = Path(os.path.expanduser(spec["apps_root"]))
        self.dir = self.root / spec["app_name"]
        self.release = spec.get("release", "")
        self.appctl = str(self.dir / "appctl.sh")

    def ctl(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        done = subprocess.run(
            [self.appctl, *args], capture_output=True, text=True, stdin=subprocess.DEVNULL
        )
        if check and done.returncode != 0:
            raise RuntimeError(f"appctl.sh {args[0]} failed: {(done.stderr or done.stdout)[-500:]}")
        return done

    def current(self) -> dict[str, Any]:
        try:
            return dict(json.loads((self.dir / "current.json").read_text()))
        except (OSError, ValueError):
            return {}

    def install_tools(self, tools: dict[str, str]) -> None:
        """The app's directory (0700: .env files live in it) and the scripts that run its
        releases (this one among them: undeploy runs it from there)."""
        self.dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        for name, text in tools.items():
            path = self.dir / name
            if not path.exists() or path.read_text() != text:
                path.with_suffix(".new").write_text(text)
                path.with_suffix(".new").chmod(0o755)
                os.replace(path.with_suffix(".new"), path)

    def unpack(self, archive: Path, env: str) -> None:
        """The archive deploy.yml sent, unpacked beside the releases with its .env (written
        straight into the 0600 file), then put in place by appctl.sh (which stops what runs of
        this release first)."""
        unpack = self.dir / "releases" / f".{self.release}.unpack"
        shutil.rmtree(unpack, ignore_errors=True)
        unpack.mkdir(parents=True, mode=0o755)
        with tarfile.open(archive) as tar:
            if hasattr(tarfile, "data_filter"):  # no absolute paths, links out, devices
                tar.extractall(unpack, filter="data")
            else:  # a python3 older than 3.8.17 (Debian 12 has 3.11.2)
                tar.extractall(unpack)
        archive.unlink()
        # The archive may hold a .env (or a link by that name) of its own: ours replaces it.
        (unpack / ".env").unlink(missing_ok=True)
        descriptor = os.open(unpack / ".env", os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(descriptor, "w") as file:
            file.write(env)
        self.ctl("install", self.release, str(unpack))

    def install_dependencies(self) -> None:
        python = self.spec.get("python") or sys.executable
        done = self.ctl("deps", self.release, python, check=False)
        if done.returncode != 0:
            tail = ((done.stdout or "") + "\n" + (done.stderr or "")).strip()[-1500:]
            raise Refused(
                "deps",
                f"release {self.release}: its dependencies (requirements.txt) could not be "
                f"installed; the end of pip's output: {tail}",
            )

    def add_env(self, name: str, value: int) -> None:
        with open(self.dir / "releases" / self.release / ".env", "a") as env:
            env.write(f"\n{name}={value}\n")

    def exits(self, release: str) -> int:
        """How often the release's process exited since its start (appctl.sh counts them)."""
        try:
            return int((self.dir / "run" / f"{release}.exits").read_text().strip())
        except (OSError, ValueError):
            return 1

    def log_tail(self, release: str, lines: int = 40) -> str:
        try:
            text = (self.dir / "logs" / f"{release}.log").read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    def running(self) -> list[str]:
        return sorted(p.stem for p in (self.dir / "run").glob("*.pid"))

    def record(self, release: str, port: int, slot: str | None, before: str | None) -> None:
        state = {"release": release, "port": port, "slot": slot, "previous": before}
        (self.dir / "current.json.new").write_text(json.dumps(state) + "\n")
        os.replace(self.dir / "current.json.new", self.dir / "current.json")
        link = self.dir / "current.new"
        link.unlink(missing_ok=True)
        link.symlink_to(Path("releases") / release)
        os.replace(link, self.dir / "current")


# --- the edge -----------------------------------------------------------------------------------


@contextlib.contextmanager
def locked(directory: Path) -> Iterator[None]:
    """``directory``'s lock file held (what the server's apps share: the edge, the cluster)."""
    directory.mkdir(parents=True, exist_ok=True)
    with open(directory / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


def bindable(port: int, address: str = "") -> bool:
    """Whether a server could listen on ``port`` of ``address`` (default: all addresses, as
    servers bind)."""
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((address, port))
        except OSError:
            return False
    return True


def free_loopback_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class Edge:
    """The server's Caddy: one for every app under the apps root."""

    def __init__(self, root: Path, spec: dict[str, Any] | None) -> None:
        self.dir = root / ".edge"
        if spec is None:  # undeploy: the settings the last deploy gave it
            try:
                spec = dict(json.loads((self.dir / "edge.json").read_text()))
            except (OSError, ValueError):
                spec = {}
        self.spec = spec
        self.admin = f"127.0.0.1:{int(spec.get('admin_port') or 2019)}"
        self.http_port = int(spec.get("http_port") or 80)
        self.https_port = int(spec.get("https_port") or 443)
        self.bind = spec.get("bind") or ""
        self.caddyfile = self.dir / "Caddyfile"

    def global_config(self) -> str:
        lines = [
            "{",
            f"\tadmin {self.admin}",
            f"\thttp_port {self.http_port}",
            f"\thttps_port {self.https_port}",
            f"\tstorage file_system {self.dir / 'data'}",
            # The internal CA's root stays in data/pki; nothing is added to this system's trust.
            "\tskip_install_trust",
            # A reload waits at most this long for the old config's connections.
            "\tgrace_period 10s",
        ]
        if self.bind:
            lines.append(f"\tdefault_bind {self.bind}")
        lines += ["}", f"import {self.dir / 'sites'}/*.caddy", ""]
        return "\n".join(lines)

    def answers(self) -> bool:
        try:
            with urllib.request.urlopen(f"http://{self.admin}/config/", timeout=2):
                return True
        except OSError:
            return False

    def locked(self) -> contextlib.AbstractContextManager[None]:
        """The edge to one deploy at a time: deploys of several apps share its configuration."""
        return locked(self.dir)

    def ensure(self, appctl: Path) -> None:
        """Caddy running with this configuration (started, or reloaded when it changed)."""
        with self.locked():
            self._ensure(appctl)

    def _ensure(self, appctl: Path) -> None:
        (self.dir / "sites").mkdir(parents=True, exist_ok=True)
        wanted = self.global_config()
        changed = not self.caddyfile.exists() or self.caddyfile.read_text() != wanted
        if changed:
            self.caddyfile.write_text(wanted)
            (self.dir / "edge.json").write_text(json.dumps(self.spec) + "\n")
        if not self.answers():
            self._start(appctl)
        elif changed:
            self.reload()

    def _caddy(self) -> str:
        found = shutil.which("caddy")
        if not found:
            raise Refused("edge", "the server has no caddy: provision it again (it installs Caddy)")
        return found

    def _start(self, appctl: Path) -> None:
        """Caddy under the same supervisor as the apps (a copy of appctl.sh in the edge's
        directory): started again whenever it exits, killed or not; it outlives this session."""
        shutil.copy2(appctl, self.dir / "appctl.sh")
        home = self.dir / "releases" / "caddy"
        home.mkdir(parents=True, exist_ok=True)
        (home / ".env").touch()
        command = " ".join(
            shlex.quote(part)
            for part in [
                "env",
                f"XDG_CONFIG_HOME={self.dir / 'config'}",  # its autosave stays in the edge's dir
                f"XDG_DATA_HOME={self.dir / 'data'}",
                self._caddy(),
                "run",
                "--config",
                str(self.caddyfile),
                "--adapter",
                "caddyfile",
            ]
        )
        subprocess.run(
            [str(self.dir / "appctl.sh"), "start", "caddy", command],
            check=True,
            capture_output=True,
            stdin=subprocess.DEVNULL,
        )
        began = time.monotonic()
        while not self.answers():
            exits = (self.dir / "run" / "caddy.exits").read_text().strip()
            if exits not in ("", "0") or time.monotonic() - began > 15:
                subprocess.run([str(self.dir / "appctl.sh"), "stop", "caddy"], check=False)
                raise Refused("edge", f"the edge (Caddy) did not start: {self._log_tail()}")
            time.sleep(0.05)

    def apply(self, site_file: Path, text: str) -> None:
        """An app's site as ``text``, the edge reloaded when it changed; when the edge refuses
        it, the file is put back as it was (Caddy keeps serving its routes of before)."""
        with self.locked():
            old = site_file.read_text() if site_file.exists() else None
            if text == old:
                return
            site_file.write_text(text)
            try:
                self.reload()
            except Refused:
                if old is None:
                    site_file.unlink()
                else:
                    site_file.write_text(old)
                raise

    def reload(self) -> None:
        done = subprocess.run(
            [
                self._caddy(),
                "reload",
                "--config",
                str(self.caddyfile),
                "--adapter",
                "caddyfile",
                "--address",
                self.admin,
            ],
            capture_output=True,
            text=True,
            stdin=subprocess.DEVNULL,
            cwd=self.dir,
        )
        if done.returncode != 0:
            raise Refused("edge", f"the edge (Caddy) refused the new routes: {done.stderr[-800:]}")

    def _log_tail(self) -> str:
        try:
            return "\n".join((self.dir / "logs" / "caddy.log").read_text().splitlines()[-10:])
        except OSError:
            return ""

    def internal_ca(self) -> str | None:
        """The root certificate of the edge's own CA (public), once Caddy has made it."""
        try:
            return (self.dir / "data" / "pki" / "authorities" / "local" / "root.crt").read_text()
        except OSError:
            return None

    def site_path(self, app: str) -> Path:
        return self.dir / "sites" / f"{app}.caddy"

    def in_flight(self, port: int) -> int:
        """Requests the edge has in flight to ``127.0.0.1:port``."""
        try:
            with urllib.request.urlopen(
                f"http://{self.admin}/reverse_proxy/upstreams", timeout=2
            ) as r:
                upstreams = json.load(r)
        except (OSError, ValueError):
            return 0
        return sum(
            u.get("num_requests", 0) for u in upstreams if u.get("address") == f"127.0.0.1:{port}"
        )

    def drain(self, port: int, limit_s: float) -> None:
        """Until no request has been in flight to ``port`` for a moment (or ``limit_s``)."""
        began = quiet = time.monotonic()
        while time.monotonic() - quiet < DRAIN_QUIET_S and time.monotonic() - began < limit_s:
            if self.in_flight(port):
                quiet = time.monotonic()
            time.sleep(0.02)


def site(app: App, port: int, names: list[str], slots: dict[str, int], tls_internal: bool) -> str:
    """The app's routes on the edge: its port (plain HTTP) and its names (HTTPS), both to the
    slot the marker file says serves."""
    snippet = f"app_{app.spec['app_name']}"
    lines = [
        f"# {app.spec['app_name']}: written by release.py on each deploy; edit nothing here.",
        f"({snippet}) {{",
        "\t@blue file {",
        f"\t\troot {app.dir / 'edge'}",
        f"\t\ttry_files /{MARKER}",
        "\t}",
        "\thandle @blue {",
        f"\t\treverse_proxy 127.0.0.1:{slots['blue']}",
        "\t}",
        "\thandle {",
        f"\t\treverse_proxy 127.0.0.1:{slots['green']}",
        "\t}",
        "}",
        f"http://:{port} {{",
        f"\timport {snippet}",
        "}",
    ]
    if names:
        lines += [", ".join(names) + " {"]
        if tls_internal:
            lines += ["\ttls internal"]
        lines += [f"\timport {snippet}", "}"]
    return "\n".join(lines) + "\n"


def saved_slots(app: App) -> dict[str, int]:
    """The app's slots and their ports as the last deploy left them (none yet: empty)."""
    try:
        saved = json.loads((app.dir / "edge" / "slots.json").read_text())
        return {slot: int(port) for slot, port in saved.items()}
    except (OSError, ValueError):
        return {}


def slots_of(app: App, serving: str | None) -> dict[str, int]:
    """The app's two internal ports, chosen once; a slot whose port another process took since
    (and that does not serve) gets a new one."""
    slots = saved_slots(app)
    for slot in SLOTS:
        if slot not in slots or (slot != serving and not bindable(slots[slot])):
            slots[slot] = free_loopback_port()
    path = app.dir / "edge" / "slots.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(slots) + "\n")
    return slots


def flip(app: App, slot: str) -> None:
    """Route the app's requests to ``slot``: atomic, seen by the edge's next request."""
    marker = app.dir / "edge" / MARKER
    if slot == "blue":
        marker.with_suffix(".new").touch()
        os.replace(marker.with_suffix(".new"), marker)
    else:
        marker.unlink(missing_ok=True)


# --- the database -------------------------------------------------------------------------------


def env_values(text: str) -> dict[str, str]:
    """The variables of a .env as deploy.yml writes it (``KEY='value'`` lines)."""
    values: dict[str, str] = {}
    for line in text.splitlines():
        if "=" in line:
            key, value = line.split("=", 1)
            values[key.strip()] = _unquote(value.strip())
    return values


class AppDatabase:
    """What an app's URL asks for: its role, password and database (the password is never in
    an exception's message, nor in a file of ours)."""

    def __init__(self, variable: str, url: str) -> None:
        self.variable = variable
        self.url = url
        try:
            parts = urllib.parse.urlsplit(url)
            self.role = urllib.parse.unquote(parts.username or "")
            self.password = urllib.parse.unquote(parts.password or "")
            self.name = parts.path.lstrip("/")
        except ValueError:
            raise Refused("database", f"its {variable} is not a postgresql:// URL") from None
        if parts.scheme not in ("postgresql", "postgres"):
            raise Refused("database", f"its {variable} is not a postgresql:// URL")
        for what, value in (("role", self.role), ("database", self.name)):
            if not DB_NAME.match(value):
                raise Refused(
                    "database",
                    f"its {variable} names the {what} {value!r}: a name of lowercase letters, "
                    "digits and '_' (at most 63, not starting with a digit) is needed",
                )
        if self.name in RESERVED_DATABASES or self.role.startswith("pg_") or self.role == PG_USER:
            raise Refused("database", f"its {variable} names the cluster's own: pick another")
        if not DB_PASSWORD.match(self.password):
            raise Refused(
                "database",
                f"its {variable} has no password, or one with characters other than letters, "
                "digits and '._~-'",
            )


class Database:
    """The server's PostgreSQL cluster for every app under the apps root, supervised by a copy
    of appctl.sh in ``<apps root>/.postgres`` (as the edge is in ``.edge``): started again
    whenever it exits. Admin connections go by its Unix socket (in the data directory, peer
    authentication); apps connect on the loopback port with their password."""

    def __init__(self, root: Path, port: int) -> None:
        self.dir = root / ".postgres"
        self.port = port
        self.as_root = os.geteuid() == 0
        if self.as_root:
            # Root's apps root may sit in a home the postgres user cannot enter.
            digest = hashlib.sha256(str(root.resolve()).encode()).hexdigest()[:12]
            self.data = ROOT_CLUSTERS / digest
            self.superuser = PG_USER
        else:
            self.data = self.dir / "data"
            self.superuser = pwd.getpwuid(os.geteuid()).pw_name
        self.settings = self.data / "orchestrator.conf"

    @classmethod
    def saved(cls, root: Path) -> Database | None:
        """The cluster as the last deploy set it up (undeploy has no port of its own)."""
        try:
            port = int(json.loads((root / ".postgres" / "cluster.json").read_text())["port"])
        except (OSError, ValueError, KeyError):
            return None
        return cls(root, port)

    def locked(self) -> contextlib.AbstractContextManager[None]:
        """Deploys of several apps start the cluster and change roles one at a time."""
        return locked(self.dir)

    # -- running its programs

    def bin(self, program: str) -> str:
        """A program of the newest PostgreSQL installed (Debian's layout, else PATH's)."""
        found = sorted(
            Path("/usr/lib/postgresql").glob("*/bin/initdb"),
            key=lambda p: int(p.parts[-3]) if p.parts[-3].isdigit() else 0,
        )
        if found:
            return str(found[-1].parent / program)
        on_path = shutil.which("initdb")
        if on_path:
            return str(Path(on_path).resolve().parent / program)
        raise Refused(
            "database",
            "the server has no PostgreSQL: provision it again with install_packages=true "
            "(it installs PostgreSQL)",
        )

    def as_owner(self, argv: list[str]) -> list[str]:
        """``argv`` run as the cluster's OS user. setpriv executes it in place (no process of
        its own between the supervisor and postgres, so a signal reaches postgres itself)."""
        if not self.as_root:
            return argv
        try:
            home = pwd.getpwnam(PG_USER).pw_dir
        except KeyError:
            raise Refused(
                "database", "the server has no postgres user: provision it again"
            ) from None
        return [
            "setpriv", f"--reuid={PG_USER}", f"--regid={PG_USER}", "--init-groups",
            "env", f"HOME={home}", *argv,
        ]  # fmt: skip

    def run(self, argv: list[str], stdin: str = "") -> subprocess.CompletedProcess[str]:
        # In /: the postgres user may not enter this run's working directory.
        return subprocess.run(
            self.as_owner(argv), input=stdin, capture_output=True, text=True, cwd="/"
        )

    def psql(self, sql: str) -> subprocess.CompletedProcess[str]:
        """SQL on psql's stdin (never its argv, which every user of the server can read)."""
        return self.run(
            [
                self.bin("psql"), "-X", "-q", "-v", "ON_ERROR_STOP=1", "-h", str(self.data),
                "-p", str(self.port), "-U", self.superuser, "-d", "postgres",
            ],
            stdin=sql,
        )  # fmt: skip

    # -- the cluster

    def ensure(self, appctl: Path) -> None:
        """The cluster made once, running with these settings, answering."""
        with self.locked():
            self._install_supervisor(appctl)
            self._init()
            changed = self._write_settings()
            supervised = self._ctl("status", "postgres").returncode == 0
            if supervised and changed:  # a new port: only a restart takes it
                self._ctl("stop", "INT")  # INT: fast shutdown, apps' sessions end at once
            started = changed or not supervised
            if started:
                self._start()
            self._wait_ready(started)

    def _install_supervisor(self, appctl: Path) -> None:
        """A copy of the apps' appctl.sh, replaced by a rename: a supervisor running the old
        one (sh reads its script as it goes) keeps reading the file it opened."""
        target = self.dir / "appctl.sh"
        text = appctl.read_text()
        if not target.exists() or target.read_text() != text:
            target.with_suffix(".new").write_text(text)
            target.with_suffix(".new").chmod(0o755)
            os.replace(target.with_suffix(".new"), target)

    def _init(self) -> None:
        """initdb into a directory beside the data's, renamed once whole: a run killed halfway
        leaves no half cluster where the next one looks."""
        if (self.data / "PG_VERSION").exists():
            return
        initdb = self.bin("initdb")
        partial = self.data.with_name(self.data.name + ".init")
        if self.as_root:
            ROOT_CLUSTERS.mkdir(parents=True, exist_ok=True, mode=0o755)
            shutil.chown(ROOT_CLUSTERS, PG_USER, PG_USER)
        else:
            self.dir.mkdir(parents=True, exist_ok=True)
        if partial.exists():
            shutil.rmtree(partial)
        done = self.run(
            [
                initdb, "-D", str(partial), "-U", self.superuser, "--auth-local=peer",
                "--auth-host=scram-sha-256", "-E", "UTF8", "--locale=C", "--no-instructions",
            ]
        )  # fmt: skip
        if done.returncode != 0:
            raise Refused("database", f"initdb failed: {(done.stderr or done.stdout)[-800:]}")
        with open(partial / "postgresql.conf", "a") as conf:
            conf.write("\n# Written by the orchestrator's deploys.\ninclude 'orchestrator.conf'\n")
        os.rename(partial, self.data)

    def _write_settings(self) -> bool:
        """Our settings, in a file postgresql.conf includes; whether they changed."""
        wanted = "\n".join(
            [
                "# Written by release.py on each deploy; edit nothing here.",
                "listen_addresses = '127.0.0.1'",
                f"port = {self.port}",
                f"unix_socket_directories = '{self.data}'",
                # A failed statement is logged with its text, and ALTER ROLE's holds a password.
                "log_min_error_statement = panic",
                "",
            ]
        )
        old = self.settings.read_text() if self.settings.exists() else None
        if old != wanted:
            self.settings.write_text(wanted)
            if self.as_root:
                shutil.chown(self.settings, PG_USER, PG_USER)
        # For undeploy, which has no port of its own.
        (self.dir / "cluster.json").write_text(json.dumps({"port": self.port}) + "\n")
        return old != wanted

    def _ctl(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(self.dir / "appctl.sh"), *args],
            capture_output=True,
            text=True,
            stdin=subprocess.DEVNULL,
        )

    def _start(self) -> None:
        """postgres under the same supervisor as the apps; it outlives this session."""
        if not bindable(self.port, "127.0.0.1"):
            raise Refused(
                "database",
                f"the server's PostgreSQL did not start: port {self.port} is in use on the "
                "server by another process (give the server's database another port)",
            )
        home = self.dir / "releases" / "postgres"
        home.mkdir(parents=True, exist_ok=True)
        (home / ".env").touch()
        argv = self.as_owner([self.bin("postgres"), "-D", str(self.data)])
        self._ctl("start", "postgres", " ".join(shlex.quote(part) for part in argv))

    def _wait_ready(self, started: bool) -> None:
        """Until pg_isready says it accepts connections; refused when one started here exits
        (its supervisor stopped: it would only fail again) or when it never answers. One that
        ran already may be between a crash and its restart: its supervisor goes on."""
        began = time.monotonic()
        isready = [self.bin("pg_isready"), "-q", "-h", str(self.data), "-p", str(self.port)]
        while self.run(isready).returncode != 0:
            exited = started and self._exits() > 0
            if exited or time.monotonic() - began > READY_S:
                if started:
                    self._ctl("stop", "postgres", "INT")
                why = "exited" if exited else f"did not answer within {READY_S:g} s"
                raise Refused(
                    "database",
                    f"the server's PostgreSQL did not start (it {why}): {self._log_tail()}",
                )
            time.sleep(0.1)

    def _exits(self) -> int:
        try:
            return int((self.dir / "run" / "postgres.exits").read_text().strip() or 0)
        except (OSError, ValueError):
            return 0

    def _log_tail(self) -> str:
        try:
            lines = (self.dir / "logs" / "postgres.log").read_text(errors="replace").splitlines()
        except OSError:
            return ""
        return "\n".join(lines[-10:])

    # -- an app's role and database

    def ensure_app(self, app: str, wanted: AppDatabase) -> None:
        """The app's role (with the URL's password, so the stored URL always works) and its
        database, owned by the role, which only the role (and the superuser) may connect to."""
        role, name = wanted.role, wanted.name
        if role == self.superuser:
            raise Refused("database", f"the role {role} is the cluster's superuser: pick another")
        with self.locked():
            self._claim(app, wanted)
            script = "\n".join(
                [
                    f"\\set password '{wanted.password}'",
                    f"SELECT 'CREATE ROLE \"{role}\" LOGIN' WHERE NOT EXISTS "
                    f"(SELECT FROM pg_roles WHERE rolname = '{role}') \\gexec",
                    f"ALTER ROLE \"{role}\" LOGIN PASSWORD :'password';",
                    f'SELECT \'CREATE DATABASE "{name}" OWNER "{role}"\' WHERE NOT EXISTS '
                    f"(SELECT FROM pg_database WHERE datname = '{name}') \\gexec",
                    f'REVOKE CONNECT ON DATABASE "{name}" FROM PUBLIC;',
                    "",
                ]
            )
            done = self.psql(script)
        if done.returncode != 0:
            # psql quotes the statement that failed, the password with it.
            why = done.stderr.replace(wanted.password, "********").strip()[-800:]
            raise Refused("database", f"the server could not create the database {name}: {why}")

    def _claim(self, app: str, wanted: AppDatabase) -> None:
        """A role or database is one app's: another app's URL naming it would take it over."""
        path = self.dir / "claims.json"
        try:
            claims = dict(json.loads(path.read_text()))
        except (OSError, ValueError):
            claims = {}
        for key in (f"role {wanted.role}", f"database {wanted.name}"):
            owner = claims.setdefault(key, app)
            if owner != app:
                raise Refused("database", f"the {key} on the server is the app {owner}'s")
        path.write_text(json.dumps(claims, indent=1, sort_keys=True) + "\n")

    def drop_app(self, app: str, role: str, name: str) -> None:
        with self.locked():
            done = self.psql(
                f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE);\nDROP ROLE IF EXISTS "{role}";\n'
            )
            if done.returncode != 0:
                raise Refused(
                    "database", f"the server could not drop the database {name}: {done.stderr}"
                )
            path = self.dir / "claims.json"
            with contextlib.suppress(OSError, ValueError):
                claims = json.loads(path.read_text())
                for key in (f"role {role}", f"database {name}"):
                    if claims.get(key) == app:
                        del claims[key]
                path.write_text(json.dumps(claims, indent=1, sort_keys=True) + "\n")


def ensure_database(app: App, spec: dict[str, Any], env: str) -> AppDatabase | None:
    """The app's database on the server's cluster, when its spec has one; saved (without the
    password) for undeploy's drop."""
    settings = spec.get("database") or {}
    if not settings:
        return None
    variable = str(settings.get("env") or "DATABASE_URL")
    url = env_values(env).get(variable, "")
    if not url:
        raise Refused("database", f"its {variable} (the database's URL) is not set")
    wanted = AppDatabase(variable, url)
    database = Database(app.root, int(settings.get("port") or 5432))
    database.ensure(Path(app.appctl))
    database.ensure_app(spec["app_name"], wanted)
    saved = {"name": wanted.name, "role": wanted.role}
    (app.dir / "database.json").write_text(json.dumps(saved) + "\n")
    return wanted


def run_watched(argv: list[str], log: Path, limit_s: float, kind: str, what: str) -> int:
    """Run ``argv`` to its end with its output in ``log``; stopped (and refused) when the
    controller is gone or it runs past ``limit_s``. Its exit status."""
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "w") as out:
        process = subprocess.Popen(
            argv,
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,  # a group of its own: a cancel stops its children too
        )
        began = time.monotonic()
        while process.poll() is None:
            try:
                check_controller()
                if time.monotonic() - began > limit_s:
                    raise Refused(kind, f"{what} ran past {limit_s:g} s")
            except Refused:
                # TERM first: podman cleans up a build's containers on it, not on KILL.
                os.killpg(process.pid, signal.SIGTERM)
                try:
                    process.wait(10)
                except subprocess.TimeoutExpired:
                    os.killpg(process.pid, signal.SIGKILL)
                    process.wait()
                raise
            time.sleep(0.05)
    return process.returncode


def output_tail(log: Path, secrets: list[str]) -> str:
    """The end of a step's output, with any secret it printed masked."""
    tail = log.read_text(errors="replace")
    for secret in secrets:
        tail = tail.replace(secret, "********")
    return tail.strip()[-1500:]


def run_release_command(
    app: App, command: str, secrets: list[str], container: Container | None
) -> None:
    """The release command, once: in the release's directory as its start script runs (by
    appctl.sh), or in a container of its image; its output in
    logs/RELEASE.release-command.log. A non-zero exit refuses the release with the end of its
    output (a secret the command printed, masked)."""
    log = app.dir / "logs" / f"{app.release}.release-command.log"
    if container is not None:
        command = container.run_command(["sh", "-c", command])
    what = f"release {app.release}: its release command"
    status = run_watched(
        [app.appctl, "run", app.release, command], log, RELEASE_COMMAND_S, "release_command", what
    )
    if status != 0:
        raise Refused(
            "release_command",
            f"{what} exited with status {status}; the end of its output: "
            f"{output_tail(log, secrets)}",
        )


# --- containers ---------------------------------------------------------------------------------


class Container:
    """A release that is a container: its image built here by podman from the release's files
    (the Dockerfile the spec names; the server needs no forge and no registry of ours), or an
    image pulled as it is, and run in the foreground under appctl.sh's supervisor (``podman run
    --rm``, so the supervisor's restarts and stops apply to it). Its network is slirp4netns:
    nothing is added to the server's firewall, its slot's port is published on loopback only,
    and the server's own loopback (the app's database) is ``10.0.2.2`` from inside."""

    HOST_LOOPBACK = "10.0.2.2"
    IMAGES = "localhost/orchestrator-apps"

    def __init__(self, app: App, spec: dict[str, Any]) -> None:
        self.app = app
        self.context = str(spec.get("context") or ".")
        self.dockerfile = str(spec.get("dockerfile") or "Dockerfile")
        self.pulled = str(spec.get("image") or "")
        self.port = int(spec.get("port") or 0)
        app_name = str(app.spec["app_name"]).lower()
        self.repository = f"{self.IMAGES}/{app_name}"
        self.image = self.pulled or f"{self.repository}:{app.release.lower()}"
        self.name = f"orchestrator-{app.spec['app_name']}-{app.release}"

    @staticmethod
    def podman() -> str:
        found = shutil.which("podman")
        if not found:
            raise Refused(
                "container", "the server has no podman: provision it again (it installs Podman)"
            )
        return found

    def build(self) -> None:
        """The image, built from the release's directory (layers cached from its earlier
        releases), or pulled; its output in logs/RELEASE.build.log."""
        directory = self.app.dir / "releases" / self.app.release
        if self.pulled:
            argv = [self.podman(), "pull", self.pulled]
        else:
            context = (directory / self.context).resolve()
            if directory.resolve() not in (context, *context.parents):
                raise Refused("build", f"its build context {self.context!r} is outside it")
            argv = [
                self.podman(), "build", "--network", "host", "--tag", self.image,
                "--file", str(context / self.dockerfile), str(context),
            ]  # fmt: skip
        log = self.app.dir / "logs" / f"{self.app.release}.build.log"
        what = f"release {self.app.release}: its image"
        status = run_watched(argv, log, BUILD_S, "build", what)
        if status != 0:
            verb = "could not be pulled" if self.pulled else "did not build"
            raise Refused(
                "build",
                f"{what} {verb} (podman exited with status {status}); the end of its output: "
                f"{output_tail(log, [])}",
            )

    def prepare_env(self, port_env: str, database: AppDatabase | None) -> None:
        """What differs inside the container, appended to the release's .env (later lines win):
        it listens on every address of its own network on its own port, and reaches the
        server's loopback at HOST_LOOPBACK."""
        lines = ["HOST=0.0.0.0"]
        if self.port:
            lines.append(f"{port_env}={self.port}")
        if database is not None:
            inside = database.url.replace("@127.0.0.1:", f"@{self.HOST_LOOPBACK}:", 1)
            lines.append(f"{database.variable}={shlex.quote(inside)}")
        with open(self.app.dir / "releases" / self.app.release / ".env", "a") as env:
            env.write("\n" + "\n".join(lines) + "\n")

    def run_command(self, command: list[str], publish: int = 0) -> str:
        """``podman run`` of the image as a shell command for appctl.sh, whose start script
        exports the release's .env first: each variable is passed by name (``--env NAME``),
        so no value is ever in a command line."""
        names = env_values((self.app.dir / "releases" / self.app.release / ".env").read_text())
        network = "slirp4netns:allow_host_loopback=true"
        argv = [self.podman(), "run", "--rm", "--replace", "--name", self.name]
        argv += ["--network", network, "--log-driver", "none"]
        if publish and self.port:
            argv += ["--publish", f"127.0.0.1:{publish}:{self.port}"]
        for name in names:
            argv += ["--env", name]
        return " ".join(shlex.quote(part) for part in [*argv, self.image, *command])

    def start(self, publish: int, command: str) -> None:
        """Started by appctl.sh's supervisor; run/RELEASE.container names it, so a stop
        removes it whatever happens to ``podman run``."""
        run = self.app.dir / "run"
        run.mkdir(exist_ok=True)
        (run / f"{self.app.release}.container").write_text(self.name + "\n")
        extra = shlex.split(command) if command else []
        self.app.ctl("start", self.app.release, self.run_command(extra, publish))

    def prune(self, keep: list[str]) -> None:
        """This app's images but those of ``keep`` (the serving release and the one before,
        which a rollback rebuilds from its cached layers anyway): best effort."""
        listed = subprocess.run(
            [self.podman(), "images", "--format", "{{.Repository}}:{{.Tag}}",
             "--filter", f"reference={self.repository}"],
            capture_output=True, text=True,
        )  # fmt: skip
        wanted = {f"{self.repository}:{release.lower()}" for release in keep if release}
        stale = [i for i in listed.stdout.split() if i.startswith(self.repository + ":")]
        stale = [i for i in stale if i not in wanted]
        if stale:
            subprocess.run([self.podman(), "rmi", "--force", *stale], capture_output=True)


# --- the controller -----------------------------------------------------------------------------


def _sshd_ancestor() -> int:
    """The sshd process this run hangs from (0 when it runs without one)."""
    pid = os.getppid()
    while pid > 1:
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
        except OSError:
            return 0
        name = stat[stat.index("(") + 1 : stat.rindex(")")]
        if name.startswith("sshd"):
            return pid
        pid = int(stat[stat.rindex(")") + 2 :].split()[1])
    return 0


SSHD = _sshd_ancestor()


def check_controller() -> None:
    """Refuse to go on when the SSH session that started this run has ended (its controller
    was cancelled or killed): whatever retries the deploy starts from a clean place."""
    if SSHD and not Path(f"/proc/{SSHD}").exists():
        raise Refused("cancelled", "the deploy that started this release is gone")


# --- health -------------------------------------------------------------------------------------


def wait_healthy(
    app: App, url: str, within_s: float, delay_s: float, any_status: bool = False
) -> None:
    """Until ``url`` answers 2xx (``any_status``: any status below 500: an app that declares no
    health path serves once it answers HTTP); refused at once when the release's process
    exits."""
    began = time.monotonic()
    while True:
        try:
            with urllib.request.urlopen(url, timeout=5):
                return
        except urllib.error.HTTPError as exc:
            if any_status and exc.code < 500:
                return
            problem = str(exc)
        except Exception as exc:  # refused, a timeout
            problem = str(exc)
        check_controller()
        if app.exits(app.release) > 0:
            raise Refused("health", f"its process exited before it answered ({problem})", url)
        if time.monotonic() - began > within_s:
            raise Refused("health", f"no answer within {within_s:g} s: {problem}", url)
        time.sleep(delay_s)


def wait_alive(app: App, liveness_s: float) -> None:
    began = time.monotonic()
    while time.monotonic() - began < liveness_s:
        check_controller()
        if app.exits(app.release) > 0:
            raise Refused("health", f"its process exited within {liveness_s:g} s of its start")
        time.sleep(0.1)


def bot_username(app: App, token_env: str, api_env: str) -> str:
    """getMe with the release's own token, read from its .env here: it never leaves the server,
    and no message printed here holds it (nor the URL, which does)."""
    env = env_values((app.dir / "releases" / app.release / ".env").read_text())
    token = env.get(token_env, "")
    if not token:
        raise Refused("health", f"its {token_env} is empty")
    base = (env.get(api_env) or BOT_API).rstrip("/")
    try:
        with urllib.request.urlopen(f"{base}/bot{token}/getMe", timeout=10) as answer:
            me = json.load(answer)
    except urllib.error.HTTPError as exc:  # Telegram says why in its JSON body
        try:
            why = json.load(exc).get("description") or ""
        except ValueError:
            why = ""
        raise Refused("health", f"the Bot API refused getMe: {exc.code} {why}".strip()) from None
    except Exception as exc:  # never str(exc) of a request: its URL holds the token
        why = getattr(exc, "reason", "")
        raise Refused(
            "health", f"the Bot API did not answer getMe: {type(exc).__name__} {why}".strip()
        ) from None
    if not me.get("ok"):
        raise Refused("health", f"the Bot API's getMe answered: {me.get('description')}")
    return str(me["result"].get("username") or "")


def _unquote(value: str) -> str:
    """A value as deploy.yml quotes it (shell single quotes)."""
    if len(value) >= 2 and value[0] == value[-1] == "'":
        return value[1:-1].replace("'\"'\"'", "'")
    return value


# --- deploy -------------------------------------------------------------------------------------

# Seconds per step of this run, in order: the outcome's ``steps`` (where a deploy's time goes).
STEPS: dict[str, float] = {}


@contextlib.contextmanager
def step(name: str) -> Iterator[None]:
    began = time.monotonic()
    try:
        yield
    finally:
        STEPS[name] = round(STEPS.get(name, 0.0) + time.monotonic() - began, 3)


def deploy(payload: dict[str, Any]) -> dict[str, Any]:
    spec = payload["spec"]
    app = App(spec)
    app.install_tools(payload["tools"])
    # One deploy of the app at a time on this server: a retry waits for what an earlier attempt
    # still runs here (it ends soon: it stops once it sees its controller gone).
    lock = open(app.dir / ".deploy.lock", "w")
    fcntl.flock(lock, fcntl.LOCK_EX)
    previous = app.current()
    archive = Path(os.path.expanduser(spec["archive"]))
    if payload.get("archive_b64"):  # shipped inline, in this call's stdin
        archive.parent.mkdir(parents=True, exist_ok=True)
        descriptor = os.open(archive, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(descriptor, "wb") as file:
            file.write(base64.b64decode(payload["archive_b64"]))
    if _serves_already(app, spec, previous):
        # A retry of a deploy that got this far before its controller died: nothing to redo,
        # and nothing that serves is touched.
        archive.unlink(missing_ok=True)
        edge = Edge(app.root, spec.get("edge") or {}) if previous.get("slot") else None
        return {
            "previous_release": previous.get("previous"),
            "slot": previous.get("slot"),
            "internal_port": saved_slots(app).get(previous.get("slot") or ""),
            "edge_ca": edge.internal_ca() if edge else None,
            "bot": bot_username(app, spec["bot_token_env"], spec.get("bot_api_env") or "")
            if spec.get("bot_token_env") and not edge
            else None,
            "database": saved_database(app) if spec.get("database") else None,
            "unchanged": True,
        }
    with step("unpack"):
        app.unpack(archive, payload["env"])
    container = Container(app, spec["container"]) if spec.get("container") else None
    with step("dependencies" if container is None else "image"):
        if container is None:
            app.install_dependencies()
        else:
            container.build()
    # Before the release starts: a database or a command that fails leaves what serves serving.
    with step("database"):
        database = ensure_database(app, spec, payload["env"])
    if container is not None:
        container.prepare_env(spec.get("port_env") or "PORT", database)
    if spec.get("release_command"):
        secrets = [database.password] if database else []
        with step("release_command"):
            run_release_command(app, str(spec["release_command"]), secrets, container)
    if int(spec.get("app_port") or 0) > 0:
        outcome = _serve_port(app, spec, previous, container)
    else:
        outcome = _take_over(app, spec, previous, container)
    if container is not None:
        container.prune([app.release, previous.get("release") or ""])
    return {
        "previous_release": previous.get("release"),
        "database": database.name if database else None,
        **outcome,
    }


def saved_database(app: App) -> str | None:
    try:
        return str(json.loads((app.dir / "database.json").read_text())["name"])
    except (OSError, ValueError, KeyError):
        return None


def _serves_already(app: App, spec: dict[str, Any], previous: dict[str, Any]) -> bool:
    """Whether this very release serves, healthy, as the spec wants it (port, names)."""
    if (
        previous.get("release") != app.release
        or app.ctl("status", app.release, check=False).returncode
    ):
        return False
    port = int(spec.get("app_port") or 0)
    if not port:
        return not previous.get("slot")
    slots, slot = saved_slots(app), str(previous.get("slot") or "")
    if slot not in slots or int(previous.get("port") or 0) != port:
        return False
    edge = Edge(app.root, spec.get("edge") or {})
    site_file = edge.site_path(spec["app_name"])
    names = [str(n) for n in spec.get("names") or []]
    wanted = site(app, port, names, slots, bool((spec.get("edge") or {}).get("tls_internal")))
    if not edge.answers() or not site_file.exists() or site_file.read_text() != wanted:
        return False
    try:
        url = f"http://127.0.0.1:{slots[slot]}{spec.get('health_path') or '/'}"
        with urllib.request.urlopen(url, timeout=5):
            return True
    except Exception:  # not healthy: deploy it again
        return False


def _serve_port(
    app: App, spec: dict[str, Any], previous: dict[str, Any], container: Container | None
) -> dict[str, Any]:
    port = int(spec["app_port"])
    names = [str(n) for n in spec.get("names") or []]
    tls_internal = bool((spec.get("edge") or {}).get("tls_internal"))
    edge = Edge(app.root, spec.get("edge") or {})
    before = previous.get("release") or ""
    # A release of the layout before the edge serves on the app's port itself: it must give
    # the port up to the edge (and gets it back if this release fails).
    legacy = before not in ("", app.release) and "slot" not in previous
    serving = before if previous.get("slot") and before != app.release else ""
    serving_slot = previous.get("slot") if serving else None
    edge.ensure(Path(app.appctl))
    if legacy:
        app.ctl("stop", before)
    site_file = edge.site_path(spec["app_name"])
    rendered = site_file.read_text() if site_file.exists() else ""
    if f"http://:{port} {{" not in rendered and not bindable(port):
        if legacy:
            app.ctl("start", before)
        raise Refused(
            "port_busy",
            f"port {port} is in use on the server by another process; "
            f"release {app.release} was not started",
        )
    slots = slots_of(app, serving_slot)
    slot = "green" if serving_slot == "blue" else "blue"
    # Whatever else runs (an attempt that died before its switch) goes: nothing but the serving
    # release may hold a slot's port.
    for other in app.running():
        if other not in (serving, before if legacy else ""):
            app.ctl("stop", other)
    if rendered:  # a slot's port moved: the edge must know before a release listens there
        edge.apply(
            site_file, site(app, int(previous.get("port") or port), names, slots, tls_internal)
        )

    try:
        with step("start_and_health"):
            if container is None:
                app.add_env(spec.get("port_env") or "PORT", slots[slot])
                app.ctl("start", app.release, spec["start_command"])
            else:  # inside, it listens on its own port, which its slot's publishes
                container.start(slots[slot], spec.get("start_command") or "")
            url = f"http://127.0.0.1:{slots[slot]}{spec.get('health_path') or '/'}"
            wait_healthy(
                app,
                url,
                float(spec.get("health_s", 30)),
                float(spec.get("health_delay", 0.2)),
                str(spec.get("health_any_status")).lower() == "true",
            )
    except Refused:
        app.ctl("stop", app.release)
        if legacy:
            app.ctl("start", before)
        raise

    was_blue = (app.dir / "edge" / MARKER).exists()
    with step("switch_and_drain"):
        flip(app, slot)
        try:
            edge.apply(site_file, site(app, port, names, slots, tls_internal))
        except Refused:  # the edge kept its routes: what served before serves on
            flip(app, "blue" if was_blue else "green")
            app.ctl("stop", app.release)
            if legacy:
                app.ctl("start", before)
            raise
        if serving_slot:
            edge.drain(slots[serving_slot], float(spec.get("drain_s", 30)))
    with step("stop_previous"):
        for other in app.running():
            if other != app.release:
                app.ctl("stop", other)
    app.record(app.release, port, slot, before or None)
    return {"slot": slot, "internal_port": slots[slot], "edge_ca": edge.internal_ca()}


def _take_over(
    app: App, spec: dict[str, Any], previous: dict[str, Any], container: Container | None
) -> dict[str, Any]:
    before = previous.get("release") or ""
    take_over = before not in ("", app.release)
    if take_over:
        app.ctl("stop", before)
    if container is None:
        app.ctl("start", app.release, spec["start_command"])
    else:
        container.start(0, spec.get("start_command") or "")
    try:
        wait_alive(app, float(spec.get("liveness_s", 3)))
        bot = ""
        if spec.get("bot_token_env"):
            bot = bot_username(app, spec["bot_token_env"], spec.get("bot_api_env") or "")
    except Refused:
        app.ctl("stop", app.release)
        if take_over:
            app.ctl("start", before)
        raise
    for other in app.running():
        if other != app.release:
            app.ctl("stop", other)
    app.record(app.release, 0, None, before or None)
    return {"bot": bot or None}


def forget(spec: dict[str, Any]) -> dict[str, Any]:
    """The app's routes off the edge (undeploy): its port is free again; with ``drop_data``,
    its database and role dropped too (without, a later deploy of the app finds its data)."""
    app = App(spec)
    edge = Edge(app.root, None)
    site_file = edge.site_path(spec["app_name"])
    with edge.locked():
        found = site_file.exists()
        if found:
            site_file.unlink()
            if edge.answers():
                edge.reload()
    if shutil.which("podman"):  # its images, if it ran as a container
        Container(app, {}).prune([])
    return {"routes_removed": found, "data_dropped": bool(spec.get("drop_data")) and drop(app)}


def drop(app: App) -> bool:
    """The app's database and role dropped; False when it had none."""
    try:
        saved = json.loads((app.dir / "database.json").read_text())
    except (OSError, ValueError):
        return False
    database = Database.saved(app.root)
    if database is None:
        return False
    database.ensure(Path(app.appctl))  # started, should it have stopped (a reboot)
    database.drop_app(app.spec["app_name"], saved["role"], saved["name"])
    (app.dir / "database.json").unlink()
    return True


def _failure(spec: dict[str, Any], refused: Refused) -> dict[str, Any]:
    message = str(refused)
    if refused.kind == "health":
        app = App(spec)
        where = f" at {refused.url}" if refused.url else ""
        message = (
            f"release {app.release} failed its health check{where} ({refused}); "
            f"last lines of its log:\n{app.log_tail(app.release)}"
        )
    return {"ok": False, "kind": refused.kind, "message": message}


def main() -> int:
    """``deploy`` reads its payload on stdin (the .env's values are in it: never in argv, which
    other users of the server can read); ``forget`` takes its spec as an argument."""
    command = sys.argv[1]
    began = time.monotonic()
    if command == "deploy":
        payload = json.load(sys.stdin)
        spec, run = payload["spec"], lambda: deploy(payload)
    elif command == "forget":
        spec = json.loads(sys.argv[2])
        run = lambda: forget(spec)  # noqa: E731
    else:
        print(f"release.py: unknown command {command}", file=sys.stderr)
        return 2
    try:
        outcome = run()
    except Refused as refused:
        print(json.dumps(_failure(spec, refused)))
        return 0
    app = App(spec)
    print(
        json.dumps(
            {
                "ok": True,
                "release_dir": str(app.dir / "releases" / app.release),
                "seconds": round(time.monotonic() - began, 3),
                "steps": STEPS,
                **outcome,
            }
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
