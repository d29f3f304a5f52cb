"""A real one-node Slurm cluster on localhost for the tests (pytest plugin).

Register it with ``pytest_plugins = ["tests.slurm_cluster"]`` in a conftest (``tests/hpc`` does) or
import :func:`slurm_cluster` into a test module. The session-scoped fixture ``slurm_cluster``:

1. installs Debian's ``slurm-wlm munge slurmdbd mariadb-server`` with apt when a daemon is missing
   (root only; otherwise the tests fail or skip with the reason);
2. writes ``slurm.conf``/``slurmdbd.conf`` for ``hostname -s`` into a private temp dir, with free
   TCP ports and a private munge socket, so it never touches a site's own Slurm or munge;
3. starts munged, MariaDB (private datadir), slurmdbd, slurmctld and slurmd, registers the cluster
   with ``sacctmgr`` and waits until the node is ``idle``;
4. exports ``SLURM_CONF`` for the session (sbatch, sacct and submitit read it), yields a
   :class:`SlurmCluster`, and afterwards stops every daemon by the PID it started, also when a
   test or the start-up failed.

Accounting (slurmdbd + MariaDB) is on by default because submitit polls job states with ``sacct``:
without it every poll logs a warning, ``job.state`` is ``UNKNOWN`` and a job that dies before it
writes its result pickle is not detected as failed (``MEDSCAN_SLURM_ACCOUNTING=0`` turns it off).
It costs about 3 s at start-up.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

APT_PACKAGES = ["slurm-wlm", "munge"]
APT_ACCOUNTING = ["slurmdbd", "mariadb-server"]
DAEMONS = {
    "munged": "/usr/sbin/munged",
    "slurmctld": "/usr/sbin/slurmctld",
    "slurmd": "/usr/sbin/slurmd",
}
ACCOUNTING_DAEMONS = {"slurmdbd": "/usr/sbin/slurmdbd", "mariadbd": "/usr/sbin/mariadbd"}
CLUSTER_NAME = "medscan"
PARTITION = "debug"


class SlurmStartError(RuntimeError):
    """The local cluster did not come up; the message names the daemon and its log tail."""


@dataclass
class SlurmCluster:
    """A running one-node cluster.

    Attributes
    ----------
    root : Path
        Private directory with the configs, spools, logs and sockets.
    conf : Path
        ``slurm.conf`` (exported as ``SLURM_CONF``).
    node : str
        Node name (``hostname -s``).
    partition : str
        The only partition.
    cpus, mem_mb : int
        Resources declared for the node (``mem_gb`` of a job must fit ``mem_mb``).
    accounting : bool
        Whether slurmdbd + MariaDB run (``sacct`` works).
    pids : dict[str, int]
        PID of every daemon started, by name.
    """

    root: Path
    conf: Path
    node: str
    partition: str
    cpus: int
    mem_mb: int
    accounting: bool
    pids: dict[str, int] = field(default_factory=dict)

    @property
    def env(self) -> dict[str, str]:
        """Environment for Slurm client commands (``os.environ`` + ``SLURM_CONF``)."""
        return {**os.environ, "SLURM_CONF": str(self.conf)}

    def run(self, *args: str, check: bool = True, timeout: float = 60) -> str:
        """Run a Slurm client command (``sinfo``, ``sacct``, ...) and return its stdout."""
        proc = subprocess.run(
            list(args), env=self.env, capture_output=True, text=True, timeout=timeout
        )
        if check and proc.returncode != 0:
            raise RuntimeError(f"{' '.join(args)} failed ({proc.returncode}): {proc.stderr}")
        return proc.stdout

    def preempt(self, job: str) -> None:
        """Preempt ``job`` as Slurm does (and as submitit's ``SlurmJob._interrupt`` simulates):
        SIGTERM, then submitit's checkpoint signal."""
        from submitit.slurm.slurm import SlurmJobEnvironment

        self.run("scancel", "--signal=TERM", job)
        self.run("scancel", f"--signal={SlurmJobEnvironment.USR_SIG}", job)

    def node_state(self) -> str:
        """State of the node as ``sinfo`` prints it (``idle``, ``mix``, ``alloc``, ...)."""
        return self.run("sinfo", "-h", "-N", "-o", "%T", check=False).strip()

    def job_states(self, job_id: str) -> list[str]:
        """States of a job and its array tasks from ``sacct`` (needs accounting)."""
        out = self.run("sacct", "-n", "-X", "-P", "-o", "JobID,State", "-j", job_id)
        return [line.split("|")[1] for line in out.splitlines() if line]

    def final_states(self, job_id: str, timeout: float = 60) -> set[str]:
        """Wait until ``sacct`` shows the job (all array tasks) ended; return the states.

        submitit returns results as soon as the result pickle exists, a moment before Slurm
        marks the job done, so tests wait here before they check states.
        """
        active = {"PENDING", "RUNNING", "COMPLETING", "REQUEUED", "RESIZING", "SUSPENDED"}
        deadline = time.monotonic() + timeout
        while True:
            states = set(self.job_states(job_id))
            if (states and not states & active) or time.monotonic() > deadline:
                return states
            time.sleep(0.5)

    def wait_idle(self, timeout: float = 120) -> None:
        """Wait until no job is queued or running (the node is back to ``idle``)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not self.run("squeue", "-h", check=False).strip() and self.node_state() == "idle":
                return
            time.sleep(0.5)
        raise TimeoutError(f"Slurm still busy after {timeout} s: {self.run('squeue')}")

    def log_tail(self, name: str, lines: int = 30) -> str:
        """The last lines of a daemon's log (``slurmctld``, ``slurmd``, ``slurmdbd``, ...)."""
        path = self.root / "log" / f"{name}.log"
        if not path.exists():
            return f"(no {path})"
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])


# ----------------------------------------------------------------------------- helpers


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _missing(accounting: bool) -> list[str]:
    wanted = dict(DAEMONS)
    if accounting:
        wanted.update(ACCOUNTING_DAEMONS)
    return [name for name, path in wanted.items() if not Path(path).exists()]


def ensure_installed(accounting: bool = True) -> None:
    """Install the Slurm packages with apt when a daemon is missing (needs root).

    Raises
    ------
    SlurmStartError
        When something is missing and this process cannot install it.
    """
    if not _missing(accounting):
        return
    packages = APT_PACKAGES + (APT_ACCOUNTING if accounting else [])
    if os.geteuid() != 0 or shutil.which("apt-get") is None:
        raise SlurmStartError(
            f"missing {_missing(accounting)}; install `apt-get install {' '.join(packages)}` "
            "(this process is not root or has no apt-get)"
        )
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    subprocess.run(["apt-get", "update", "-qq"], env=env, check=True)
    subprocess.run(
        ["apt-get", "install", "-y", "-qq", "--no-install-recommends", *packages],
        env=env,
        check=True,
    )
    if _missing(accounting):
        raise SlurmStartError(f"still missing after apt: {_missing(accounting)}")


def _read_pid(path: Path, timeout: float = 20) -> int:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(FileNotFoundError, ValueError):
            text = path.read_text().strip()
            if text:
                return int(text)
        time.sleep(0.05)
    raise SlurmStartError(f"no pid file {path} after {timeout} s")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie child of ours counts as gone.
    with contextlib.suppress(ChildProcessError):
        done, _ = os.waitpid(pid, os.WNOHANG)
        if done == pid:
            return False
    return True


def stop_pid(pid: int, timeout: float = 15) -> None:
    """Stop one process by PID: SIGTERM, wait, then SIGKILL."""
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not _alive(pid):
            return
        time.sleep(0.1)
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)


def _key_file() -> Path:
    key = Path("/etc/munge/munge.key")
    if not key.exists():  # Debian's postinst creates it; make one if a site removed it.
        subprocess.run(["mungekey", "--create", f"--keyfile={key}"], check=True)
        shutil.chown(key, "munge", "munge")
        key.chmod(0o600)
    return key


def _slurm_conf(c: SlurmCluster, ports: dict[str, int], munge_socket: Path) -> str:
    r = c.root
    lines = [
        f"ClusterName={CLUSTER_NAME}",
        f"SlurmctldHost={c.node}(127.0.0.1)",
        f"SlurmctldPort={ports['ctld']}",
        f"SlurmdPort={ports['d']}",
        "SlurmUser=root",
        "SlurmdUser=root",
        "AuthType=auth/munge",
        "CredType=cred/munge",
        # cred_expire also delays a requeued job's restart (default 120 s): short for tests.
        f"AuthInfo=socket={munge_socket},cred_expire=10",
        "ProctrackType=proctrack/linuxproc",
        "TaskPlugin=task/none",
        "SchedulerType=sched/backfill",
        "SelectType=select/cons_tres",
        "SelectTypeParameters=CR_Core",
        "MpiDefault=none",
        "ReturnToService=2",
        # Trust the node line below even where the machine has fewer cores than it declares.
        "SlurmdParameters=config_overrides",
        # Quick turnover for tests: requeued jobs may start again at once.
        "MinJobAge=300",
        "KillWait=5",
        f"StateSaveLocation={r}/spool/ctld",
        f"SlurmdSpoolDir={r}/spool/d",
        f"SlurmctldPidFile={r}/run/slurmctld.pid",
        f"SlurmdPidFile={r}/run/slurmd.pid",
        f"SlurmctldLogFile={r}/log/slurmctld.log",
        f"SlurmdLogFile={r}/log/slurmd.log",
    ]
    if c.accounting:
        lines += [
            "AccountingStorageType=accounting_storage/slurmdbd",
            "AccountingStorageHost=127.0.0.1",
            f"AccountingStoragePort={ports['dbd']}",
            # With munge, this names the munge socket for talking to slurmdbd (slurm.conf(5)).
            f"AccountingStoragePass={munge_socket}",
            "JobAcctGatherType=jobacct_gather/linux",
            "JobAcctGatherFrequency=30",
        ]
    else:
        lines += [
            "AccountingStorageType=accounting_storage/none",
            "JobAcctGatherType=jobacct_gather/none",
        ]
    lines += [
        f"NodeName={c.node} NodeAddr=127.0.0.1 CPUs={c.cpus} RealMemory={c.mem_mb} State=UNKNOWN",
        f"PartitionName={c.partition} Nodes=ALL Default=YES MaxTime=INFINITE State=UP",
    ]
    return "\n".join(lines) + "\n"


def _node_memory_mb() -> int:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemTotal:"):
            total = int(line.split()[1]) // 1024
            return max(1024, int(total * 0.8))  # leave room for the OS and the test process
    return 4096


# ----------------------------------------------------------------------------- start / stop


def _start_munge(c: SlurmCluster) -> Path:
    mdir = c.root / "munge"
    mdir.mkdir()
    mdir.chmod(0o755)  # munged: clients need execute permission on the socket dir
    shutil.chown(mdir, "munge", "munge")
    sock = mdir / "munge.socket"
    pidfile = mdir / "munged.pid"
    subprocess.run(
        [
            "runuser", "-u", "munge", "--", DAEMONS["munged"],
            f"--socket={sock}", f"--pid-file={pidfile}", f"--key-file={_key_file()}",
            f"--log-file={mdir / 'munged.log'}", f"--seed-file={mdir / 'munged.seed'}",
        ],
        check=True,
        capture_output=True,
    )
    c.pids["munged"] = _read_pid(pidfile)
    check = subprocess.run(
        f"munge -S {sock} -n | unmunge -S {sock}", shell=True, capture_output=True, text=True
    )
    if "Success" not in check.stdout:
        raise SlurmStartError(f"munge credential check failed: {check.stdout}{check.stderr}")
    return sock


def _start_mariadb(c: SlurmCluster, port: int) -> tuple[str, str]:
    ddir = c.root / "mysql"
    sock = c.root / "run" / "mysqld.sock"
    pidfile = c.root / "run" / "mysqld.pid"
    subprocess.run(
        [
            "mariadb-install-db", "--no-defaults", f"--datadir={ddir}", "--user=root",
            "--auth-root-authentication-method=socket", "--skip-test-db",
        ],
        check=True,
        capture_output=True,
    )
    log = open(c.root / "log" / "mariadbd.log", "ab")
    proc = subprocess.Popen(
        [
            ACCOUNTING_DAEMONS["mariadbd"], "--no-defaults", f"--datadir={ddir}", "--user=root",
            f"--socket={sock}", f"--pid-file={pidfile}", f"--port={port}",
            "--bind-address=127.0.0.1", "--skip-name-resolve", "--innodb-buffer-pool-size=32M",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    c.pids["mariadbd"] = proc.pid
    user, password = "slurm", f"medscan-{os.getpid()}"
    sql = (
        "CREATE DATABASE IF NOT EXISTS slurm_acct_db;"
        f"CREATE USER '{user}'@'127.0.0.1' IDENTIFIED BY '{password}';"
        f"GRANT ALL ON slurm_acct_db.* TO '{user}'@'127.0.0.1';"
    )
    deadline = time.monotonic() + 60
    while True:
        res = subprocess.run(
            ["mariadb", "--no-defaults", f"--socket={sock}", "-uroot", "-e", sql],
            capture_output=True,
            text=True,
        )
        if res.returncode == 0:
            return user, password
        if proc.poll() is not None or time.monotonic() > deadline:
            raise SlurmStartError(f"MariaDB did not start: {res.stderr}\n{c.log_tail('mariadbd')}")
        time.sleep(0.2)


def _start_slurmdbd(
    c: SlurmCluster, ports: dict[str, int], sock: Path, db: tuple[str, str]
) -> None:
    conf = c.root / "slurmdbd.conf"
    conf.write_text(
        "\n".join(
            [
                "AuthType=auth/munge",
                f"AuthInfo=socket={sock}",
                "DbdHost=localhost",
                "DbdAddr=127.0.0.1",
                f"DbdPort={ports['dbd']}",
                "SlurmUser=root",
                "StorageType=accounting_storage/mysql",
                "StorageHost=127.0.0.1",
                f"StoragePort={ports['mysql']}",
                "StorageLoc=slurm_acct_db",
                f"StorageUser={db[0]}",
                f"StoragePass={db[1]}",
                f"PidFile={c.root}/run/slurmdbd.pid",
                f"LogFile={c.root}/log/slurmdbd.log",
            ]
        )
        + "\n"
    )
    conf.chmod(0o600)
    subprocess.run([ACCOUNTING_DAEMONS["slurmdbd"]], env=c.env, check=True, capture_output=True)
    c.pids["slurmdbd"] = _read_pid(c.root / "run" / "slurmdbd.pid")
    deadline = time.monotonic() + 60
    while True:  # slurmdbd creates its tables first; sacctmgr answers once it listens
        res = subprocess.run(
            ["sacctmgr", "-i", "add", "cluster", CLUSTER_NAME],
            env=c.env,
            capture_output=True,
            text=True,
        )
        if res.returncode == 0 or "already exists" in res.stdout + res.stderr:
            return
        if time.monotonic() > deadline:
            raise SlurmStartError(f"sacctmgr failed: {res.stderr}\n{c.log_tail('slurmdbd')}")
        time.sleep(0.3)


def start_cluster(root: Path, *, accounting: bool = True) -> SlurmCluster:
    """Start munged (+ MariaDB, slurmdbd), slurmctld and slurmd under ``root``.

    On failure every daemon already started is stopped before the error propagates.

    Parameters
    ----------
    root : Path
        Empty directory, readable by the ``munge`` user (keep the path short: sockets live here).
    accounting : bool
        Run slurmdbd + MariaDB so ``sacct`` (and submitit's state polling) works.
    """
    ensure_installed(accounting)
    for sub in ("spool/ctld", "spool/d", "run", "log"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    c = SlurmCluster(
        root=root,
        conf=root / "slurm.conf",
        node=socket.gethostname().split(".")[0],
        partition=PARTITION,
        # At least 2 CPUs so a 2-task DDP job fits on a 1-core runner (config_overrides below).
        cpus=max(2, os.cpu_count() or 1),
        mem_mb=_node_memory_mb(),
        accounting=accounting,
    )
    ports = {"ctld": _free_port(), "d": _free_port(), "dbd": _free_port(), "mysql": _free_port()}
    try:
        sock = _start_munge(c)
        c.conf.write_text(_slurm_conf(c, ports, sock))
        if accounting:
            db = _start_mariadb(c, ports["mysql"])
            _start_slurmdbd(c, ports, sock, db)
        for name in ("slurmctld", "slurmd"):
            res = subprocess.run(
                [DAEMONS[name], "-f", str(c.conf)], env=c.env, capture_output=True, text=True
            )
            if res.returncode != 0:
                raise SlurmStartError(f"{name} exited {res.returncode}: {res.stderr}")
            c.pids[name] = _read_pid(root / "run" / f"{name}.pid")
        deadline = time.monotonic() + 60
        while c.node_state() != "idle":
            if time.monotonic() > deadline:
                raise SlurmStartError(
                    f"node not idle after 60 s (state {c.node_state()!r})\n"
                    f"{c.log_tail('slurmctld')}\n{c.log_tail('slurmd')}"
                )
            time.sleep(0.2)
    except BaseException:
        stop_cluster(c)
        raise
    return c


def _our_stepds(c: SlurmCluster) -> list[int]:
    """PIDs of slurmstepd processes that belong to this cluster (their SLURM_CONF is ours)."""
    mine = f"SLURM_CONF={c.conf}".encode()
    pids = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        with contextlib.suppress(OSError):
            if (proc / "comm").read_text().strip() == "slurmstepd" and mine in (
                proc / "environ"
            ).read_bytes().split(b"\0"):
                pids.append(int(proc.name))
    return pids


def stop_cluster(c: SlurmCluster) -> None:
    """Cancel leftover jobs, then stop every daemon this cluster started, by PID, in order.

    Job steps (slurmstepd) outlive a stopped slurmd by design, so jobs are cancelled and
    drained first, and any step of this cluster still alive afterwards is stopped by its PID.
    """
    if "slurmctld" in c.pids and _alive(c.pids["slurmctld"]):
        with contextlib.suppress(Exception):
            c.run("scancel", "--full", "-u", "root", check=False, timeout=10)
            deadline = time.monotonic() + 30
            while c.run("squeue", "-h", check=False).strip() and time.monotonic() < deadline:
                time.sleep(0.5)
    for name in ("slurmd", "slurmctld", "slurmdbd", "mariadbd", "munged"):
        pid = c.pids.pop(name, None)
        if pid is not None:
            stop_pid(pid)
    for pid in _our_stepds(c):
        stop_pid(pid, timeout=5)


@contextlib.contextmanager
def running_cluster(*, accounting: bool = True, keep: bool = False) -> Iterator[SlurmCluster]:
    """Context manager: a cluster in a fresh temp dir, ``SLURM_CONF`` exported while it runs."""
    root = Path(tempfile.mkdtemp(prefix="medscan-slurm-", dir="/tmp"))
    root.chmod(0o755)  # munged runs as user munge and needs to reach its socket dir
    old = os.environ.get("SLURM_CONF")
    cluster = start_cluster(root, accounting=accounting)
    os.environ["SLURM_CONF"] = str(cluster.conf)
    try:
        yield cluster
    finally:
        stop_cluster(cluster)
        if old is None:
            os.environ.pop("SLURM_CONF", None)
        else:
            os.environ["SLURM_CONF"] = old
        if not keep:
            shutil.rmtree(root, ignore_errors=True)


def _accounting_wanted() -> bool:
    return os.environ.get("MEDSCAN_SLURM_ACCOUNTING", "1") not in {"0", "false", "no"}


@pytest.fixture(scope="session")
def slurm_cluster() -> Iterator[SlurmCluster]:
    """A running one-node Slurm (session-scoped; see the module docstring)."""
    try:
        with running_cluster(accounting=_accounting_wanted()) as cluster:
            yield cluster
    except SlurmStartError as exc:
        # Outside CI (a user's clone without root) skip with the reason; CI must never skip.
        if os.environ.get("CI") or os.geteuid() == 0:
            raise
        pytest.skip(f"cannot start a local Slurm: {exc}")
