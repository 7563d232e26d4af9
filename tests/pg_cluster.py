"""A throwaway PostgreSQL cluster on 127.0.0.1 for tests (Debian's `postgresql` package, which
`scripts/setup_postgres.sh` installs): initdb into a fresh temporary folder, pg_ctl start on a free
port, trust authentication for one superuser on 127.0.0.1 only, `pg_ctl stop -m immediate` and
the folder removed on exit. PostgreSQL refuses to run as root, so under root every command runs
as the `postgres` system user (`runuser -u postgres`), which the package creates.

    with PgCluster() as pg:
        pg.url     # postgresql+psycopg2://edgeuq@127.0.0.1:PORT/postgres
"""
from __future__ import annotations

import glob
import os
import shutil
import subprocess
import tempfile
from typing import List, Optional

from rpc_farm import free_port

__all__ = ["PgCluster", "postgres_bindir"]


def postgres_bindir() -> Optional[str]:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/pg_ctl"))
    if found:
        return os.path.dirname(found[-1])
    pg_ctl = shutil.which("pg_ctl")
    return os.path.dirname(pg_ctl) if pg_ctl else None


class PgCluster:
    def __init__(self, timeout_s: int = 120) -> None:
        self.timeout_s = timeout_s
        self.bindir = postgres_bindir()
        self.tmp: Optional[str] = None
        self.port: Optional[int] = None
        self.started = False

    def _as_owner(self) -> List[str]:
        return ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []

    def _run(self, *cmd: str) -> None:
        res = subprocess.run([*self._as_owner(), *cmd], capture_output=True, text=True, timeout=self.timeout_s)
        if res.returncode != 0:
            raise RuntimeError(f"{' '.join(cmd[:2])} failed ({res.returncode}): {(res.stderr or res.stdout)[-800:]}")

    @property
    def url(self) -> str:
        return f"postgresql+psycopg2://edgeuq@127.0.0.1:{self.port}/postgres"

    def __enter__(self) -> "PgCluster":
        if self.bindir is None:
            raise FileNotFoundError("PostgreSQL is not installed (run bash scripts/setup_postgres.sh; make install does)")
        self.tmp = tempfile.mkdtemp(prefix="edgeuq-pg-")
        os.chmod(self.tmp, 0o755)
        data = os.path.join(self.tmp, "data")
        if os.geteuid() == 0:
            shutil.chown(self.tmp, "postgres", "postgres")
        try:
            self._run(os.path.join(self.bindir, "initdb"), "-D", data, "-A", "trust", "-U", "edgeuq", "-E", "UTF8",
                      "--no-sync")
            self.port = free_port()
            self._run(os.path.join(self.bindir, "pg_ctl"), "-D", data, "-l", os.path.join(self.tmp, "log"), "-w",
                      "-t", str(self.timeout_s), "-o",
                      f"-p {self.port} -h 127.0.0.1 -k {self.tmp} -c fsync=off -c max_connections=50", "start")
            self.started = True
        except BaseException:
            self.__exit__()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        if self.started:
            self._run(os.path.join(self.bindir, "pg_ctl"), "-D", os.path.join(self.tmp, "data"), "-m", "immediate",
                      "-w", "stop")
            self.started = False
        if self.tmp is not None:
            shutil.rmtree(self.tmp, ignore_errors=True)
            self.tmp = None
