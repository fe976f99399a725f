"""A real single-node SLURM cluster on localhost, everything under one temp dir (docs/DESIGN.md §4).

munged, slurmctld and slurmd run in the foreground as children of this process, so stopping the
cluster stops exactly the PIDs it started and nothing else on the machine. Ports are picked free,
so several test sessions can run clusters side by side.
"""

from __future__ import annotations

import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

_SBIN = ("/usr/sbin", "/sbin", "/usr/local/sbin")
DAEMONS = ("munged", "slurmctld", "slurmd")
CLIENTS = ("sbatch", "squeue", "sinfo", "scancel", "scontrol")
INSTALL_HINT = (
    "the tests need a real local SLURM: install it with "
    "`apt-get install -y --no-install-recommends slurmctld slurmd slurm-client munge`"
)


class SlurmClusterError(RuntimeError):
    """The local cluster could not start; the message includes the daemons' log tails."""


def _which(name: str) -> str | None:
    return shutil.which(name) or shutil.which(name, path=os.pathsep.join(_SBIN))


def missing_binaries() -> list[str]:
    return [b for b in DAEMONS + CLIENTS if _which(b) is None]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _node_line(hostname: str, port: int) -> str:
    """Node hardware from `slurmd -C`, with RealMemory below the machine's so slurmd never drains it."""
    out = subprocess.run([_which("slurmd"), "-C"], capture_output=True, text=True, check=True).stdout
    fields = dict(tok.split("=", 1) for tok in out.split()[:-1] if "=" in tok and not tok.startswith("UpTime"))
    fields.pop("NodeName", None)
    fields["RealMemory"] = str(int(int(fields.get("RealMemory", "2048")) * 0.8))
    hw = " ".join(f"{k}={v}" for k, v in fields.items())
    return f"NodeName={hostname} NodeAddr=127.0.0.1 Port={port} {hw} State=UNKNOWN"


def write_config(root: Path, hostname: str) -> Path:
    ctld_port, slurmd_port = _free_port(), _free_port()
    (root / "plugstack.conf").write_text("")
    conf = f"""\
ClusterName=duetmc-test
SlurmctldHost={hostname}(127.0.0.1)
SlurmctldPort={ctld_port}
SlurmdPort={slurmd_port}
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
# cred_expire also sets how long a requeued job waits before it may start again (default 120 s)
AuthInfo=socket={root}/munge/munge.socket,cred_expire=5
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
# without a default memory per CPU each job takes the whole node and array tasks run one at a time
DefMemPerCPU=1000
SchedulerType=sched/backfill
# sched_interval: the main loop also starts requeued jobs once their BeginTime passes (default 60 s)
SchedulerParameters=batch_sched_delay=0,sched_min_interval=0,sched_interval=1,bf_interval=1
MailProg=/bin/true
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
JobCompType=jobcomp/none
JobRequeue=1
ReturnToService=2
MinJobAge=300
KillWait=5
PlugStackConfig={root}/plugstack.conf
StateSaveLocation={root}/state
SlurmdSpoolDir={root}/spool
SlurmctldPidFile={root}/run/slurmctld.pid
SlurmdPidFile={root}/run/slurmd.pid
SlurmctldLogFile={root}/log/slurmctld.log
SlurmdLogFile={root}/log/slurmd.log
{_node_line(hostname, slurmd_port)}
PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP
"""
    path = root / "slurm.conf"
    path.write_text(conf)
    return path


@dataclass
class SlurmCluster:
    root: Path
    env: dict[str, str]
    hostname: str
    procs: dict[str, subprocess.Popen] = field(default_factory=dict)

    def run(self, *args: str, check: bool = True, timeout: float = 30) -> subprocess.CompletedProcess:
        """Run a SLURM client command against this cluster."""
        res = subprocess.run(list(args), env=self.env, capture_output=True, text=True, timeout=timeout)
        if check and res.returncode != 0:
            raise SlurmClusterError(f"{' '.join(args)} failed ({res.returncode}): {res.stderr.strip()}")
        return res

    def squeue_ids(self) -> list[str]:
        """Ids of every job or array task still queued or running (array tasks as JOB_TASK)."""
        out = self.run("squeue", "--noheader", "--array", "--format=%i").stdout
        return [line.strip() for line in out.splitlines() if line.strip()]

    def wait_all(self, timeout: float = 60) -> None:
        """Poll squeue until empty (sbatch --wait backs off to 32 s polls, far too slow)."""
        deadline = time.monotonic() + timeout
        while (ids := self.squeue_ids()):
            if time.monotonic() > deadline:
                raise TimeoutError(f"jobs still in squeue after {timeout:.0f}s: {ids}\n{self.log_tails()}")
            time.sleep(0.2)

    def node_state(self) -> str:
        res = self.run("sinfo", "--noheader", "--format=%T", check=False)
        return res.stdout.strip()

    def log_tails(self, lines: int = 15) -> str:
        parts = []
        for log in sorted((self.root / "log").glob("*.*")):
            tail = log.read_text(errors="replace").splitlines()[-lines:]
            parts.append(f"--- {log.name} ---\n" + "\n".join(tail))
        return "\n".join(parts)

    def cancel_all(self, timeout: float = 20) -> None:
        if "slurmctld" not in self.procs or self.procs["slurmctld"].poll() is not None:
            return
        self.run("scancel", "--full", f"--user={os.getuid()}", check=False)
        try:
            self.wait_all(timeout)
        except (TimeoutError, SlurmClusterError, subprocess.TimeoutExpired):
            pass

    def stop(self) -> None:
        """Cancel jobs first (a controller shutdown leaves them running), then stop our own daemons."""
        try:
            self.cancel_all()
        finally:
            for name in reversed(DAEMONS):
                proc = self.procs.pop(name, None)
                if proc is None or proc.poll() is not None:
                    continue
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait(timeout=5)


def _start(cluster: SlurmCluster, name: str, args: list[str]) -> None:
    log = open(cluster.root / "log" / f"{name}.out", "ab")
    cluster.procs[name] = subprocess.Popen(
        [_which(name), *args], env=cluster.env, stdout=log, stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL, start_new_session=True,
    )
    log.close()


def _wait_for(what: str, cond, cluster: SlurmCluster, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        for name, proc in cluster.procs.items():
            if proc.poll() is not None:
                raise SlurmClusterError(f"{name} exited with {proc.returncode} while waiting for {what}\n{cluster.log_tails()}")
        if time.monotonic() > deadline:
            raise SlurmClusterError(f"timed out after {timeout:.0f}s waiting for {what}\n{cluster.log_tails()}")
        time.sleep(0.1)


def start_cluster(root: Path, timeout: float = 30) -> SlurmCluster:
    """Start munged, slurmctld and slurmd under `root` and return once the node is idle."""
    missing = missing_binaries()
    if missing:
        raise SlurmClusterError(f"missing {', '.join(missing)}: {INSTALL_HINT}")
    if os.getuid() != 0:
        raise SlurmClusterError("the local SLURM cluster runs its daemons as root; run the tests as root (as CI does)")
    root = Path(root).resolve()
    hostname = socket.gethostname().split(".")[0]
    for sub in ("munge", "munge-key", "state", "spool", "run", "log"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    # munged wants its socket dir traversable by all (a+x) and its key dir private (0700).
    root.chmod(0o755)
    (root / "munge").chmod(0o755)
    (root / "munge-key").chmod(0o700)
    key = root / "munge-key" / "munge.key"
    key.write_bytes(secrets.token_bytes(1024))
    key.chmod(0o400)
    conf = write_config(root, hostname)

    env = dict(os.environ)
    env = {k: v for k, v in env.items() if not k.startswith(("SLURM_", "SBATCH_", "SRUN_", "SALLOC_"))}
    env["SLURM_CONF"] = str(conf)
    # jobs inherit this PATH (sbatch exports ALL by default): the venv's python and duetmc come first
    path = [os.path.dirname(os.path.abspath(sys.executable))] + env.get("PATH", "").split(os.pathsep) + list(_SBIN)
    env["PATH"] = os.pathsep.join(dict.fromkeys(p for p in path if p))
    cluster = SlurmCluster(root=root, env=env, hostname=hostname)
    try:
        sock = root / "munge" / "munge.socket"
        _start(cluster, "munged", [
            "--foreground", f"--socket={sock}", f"--key-file={key}", f"--pid-file={root}/run/munged.pid",
            f"--log-file={root}/log/munged.log", f"--seed-file={root}/munge-key/munged.seed",
        ])
        _wait_for("the munge socket", sock.exists, cluster, timeout)
        _start(cluster, "slurmctld", ["-D", "-c", "-f", str(conf)])
        _wait_for("slurmctld", lambda: cluster.node_state() != "", cluster, timeout)
        _start(cluster, "slurmd", ["-D", "-f", str(conf), "-N", hostname])
        _wait_for("the node to become idle", lambda: cluster.node_state() == "idle", cluster, timeout)
    except BaseException:
        cluster.stop()
        raise
    return cluster
