"""Workers under SLURM, on a real one-node SLURM cluster: ``python -m sweeps.slurm`` writes and submits an array job
whose tasks run the sweep on one PostgreSQL study, logging to one real MLflow tracking server.

The cluster is this module's own: munged, slurmctld and slurmd from Debian's ``slurm-wlm`` and ``munge``, started
on loopback with their own key, ports, state and spool directories under a temporary directory, and stopped at the
end. ``make test`` installs the packages when they are missing (its ``slurm`` target, as root or with sudo). Where
they are missing on a Debian machine with root, where ``make test`` would have installed them, these tests fail;
elsewhere (not Debian, not root: slurmd must run as root to launch jobs) they are skipped with the reason.

The first tests check the script and the bad-input policy and need no cluster.
"""

from __future__ import annotations

import os
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import optuna
import pytest
from mlflow.tracking import MlflowClient
from optuna.trial import FrozenTrial, TrialState

from landscape_core.config import ANALYSES
from sweeps import slurm
from sweeps.storage import open_storage
from tests.sweeps.conftest import FAST, REPO, SMOKE, free_port, mlflow_server, scratch_databases
from tracking.population import load_population
from tracking.store import TrackingStore

#: Trials long enough (a few seconds) that a scancel sent once a trial's run exists lands inside the trial.
SLOW = [*SMOKE, "--train-size", "512", "--test-size", "128", "--epochs", "2", "--skip", ",".join(ANALYSES)]
#: Where the SLURM daemons are on Debian (/usr/sbin is not on every user's PATH).
SEARCH_PATH = os.pathsep.join([os.environ.get("PATH", ""), "/usr/sbin", "/sbin"])
DAEMONS = ("munged", "slurmctld", "slurmd")
CLIENTS = ("sbatch", "squeue", "scancel", "scontrol", "sinfo")
HEARTBEAT = 5


# --- the script and bad input (no cluster) -----------------------------------------------------------------------


def write_script(tmp_path: Path, *args: str, capsys) -> tuple[int, str]:
    script = tmp_path / "job.sbatch"
    status = slurm.main(["--script", str(script), "--chdir", str(tmp_path), *args])
    return status, capsys.readouterr().out


def sbatch_directives(text: str) -> dict[str, str]:
    options = [line.removeprefix("#SBATCH ").strip() for line in text.splitlines() if line.startswith("#SBATCH ")]
    return dict(option.removeprefix("--").split("=", 1) for option in options)


def test_the_script_is_an_array_of_k_tasks_each_running_the_sweep_with_storage_server_and_heartbeat(tmp_path, capsys):
    storage, tracking = "postgresql://worker@db-host:5432/optuna", "http://mlflow-host:5000"
    args = ["--tasks", "3", "--cpus-per-task", "2", "--time", "1:00:00", "--sbatch=--qos=long", "--log-dir", "logs"]
    args += ["--storage", storage, "--tracking-uri", tracking, "--heartbeat", "7", "--", "--n", "12", *FAST]
    status, out = write_script(tmp_path, *args, capsys=capsys)
    assert status == 0, out
    text = (tmp_path / "job.sbatch").read_text()
    assert text.startswith("#!/bin/bash\n") and os.access(tmp_path / "job.sbatch", os.X_OK)
    directives = sbatch_directives(text)
    assert directives["array"] == "0-2" and directives["cpus-per-task"] == "2" and directives["ntasks"] == "1"
    assert directives["output"] == "logs/%x-%A_%a.out" and directives["chdir"] == str(tmp_path.resolve())
    assert directives["time"] == "1:00:00" and directives["qos"] == "long"
    assert (tmp_path / "logs").is_dir(), "sbatch does not create the directory of --output"
    # The task's command, as bash will run it.
    (command,) = [line.removeprefix("exec ") for line in text.splitlines() if line.startswith("exec ")]
    words = shlex.split(command)
    sweep = ["--n", "12", *FAST, "--storage", storage, "--tracking-uri", tracking, "--heartbeat", "7"]
    assert words == [sys.executable, "-m", "sweeps.seeds", *sweep]
    assert shlex.join(["python", "-m", "sweeps.seeds", *sweep]) in out  # what each task runs, as it is printed
    assert f"submit it with: sbatch {tmp_path / 'job.sbatch'}" in out


PG, SERVER = "postgresql://worker@db-host/optuna", "http://mlflow-host:5000"
GOOD = ["--storage", PG, "--tracking-uri", SERVER]
#: Bad input of ``python -m sweeps.slurm`` and the one line it gets.
BAD = {
    "a journal": (["--storage", "mlruns/optuna.journal", "--tracking-uri", SERVER], "PostgreSQL or MySQL URL"),
    "sqlite": (["--storage", "sqlite:///optuna.db", "--tracking-uri", SERVER], "PostgreSQL or MySQL URL"),
    "no storage": (["--tracking-uri", SERVER], "`--storage` with the RDB URL of the study"),
    "a local tracking store": (["--storage", PG, "--tracking-uri", "sqlite:///mlflow.db"], "MLflow server URL"),
    "no tracking server": (["--storage", PG], "`--tracking-uri` with the MLflow server's URL"),
    "a password in the storage": (
        ["--storage", "postgresql://w:hunter2@db/optuna", "--tracking-uri", SERVER],
        "`--storage` without a password",
    ),
    "preset auto": ([*GOOD, "--", "--preset", "auto"], "array tasks may land on nodes with and without a GPU"),
    "a bad sweep value": ([*GOOD, "--", "--preset", "smoke", "--n", "0"], "Expected `--n` >= 1, got 0"),
    "an unknown sweep option": ([*GOOD, "--", "--no-such-option"], "unrecognized arguments: --no-such-option"),
    "an array of no task": (["--tasks", "0", *GOOD], "Expected `--tasks` >= 1, got 0"),
    "a heartbeat among the sweep's options": ([*GOOD, "--", "--heartbeat", "3"], "`--heartbeat` is an option of"),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_input_exits_2_with_one_line_and_writes_nothing(case, tmp_path, capsys):
    args, expected = BAD[case]
    status, out = write_script(tmp_path, *args, capsys=capsys)
    lines = [line for line in out.splitlines() if line.strip()]
    assert status == 2 and len(lines) == 1 and lines[0].startswith("error: ") and expected in lines[0], out
    assert "hunter2" not in out
    assert list(tmp_path.iterdir()) == [], "bad input writes nothing"


def test_submit_without_sbatch_on_path_exits_2_and_writes_nothing(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    args = ["--storage", "postgresql://w@db/optuna", "--tracking-uri", "http://mlflow:5000", "--submit"]
    status, out = write_script(tmp_path, *args, "--", *FAST, capsys=capsys)
    assert status == 2 and "`sbatch` is not on PATH" in out
    assert not (tmp_path / "job.sbatch").exists() and not (tmp_path / "slurm-logs").exists()


# --- a real one-node cluster -------------------------------------------------------------------------------------


def installable_here() -> bool:
    """True where ``make test`` installs SLURM when it is missing: Debian, apt-get, root."""
    return Path("/etc/debian_version").exists() and shutil.which("apt-get") is not None and os.geteuid() == 0


def require_slurm() -> dict[str, str]:
    """The SLURM programs (name -> path); fails or skips, with the reason, when they are missing."""
    if os.geteuid() != 0:
        pytest.skip("a private SLURM cluster needs root (slurmd launches the jobs as their user)")
    found = {name: shutil.which(name, path=SEARCH_PATH) for name in (*DAEMONS, *CLIENTS)}
    missing = sorted(name for name, path in found.items() if path is None)
    if not missing:
        return found  # type: ignore[return-value]
    message = f"SLURM is not installed ({', '.join(missing)} missing)"
    if installable_here():
        pytest.fail(f"{message}: `make test` installs it here (its slurm target: apt-get install slurm-wlm munge)")
    pytest.skip(f"{message}, and `make test` cannot install it here (it needs Debian's slurm-wlm and root)")


@dataclass
class SlurmCluster:
    """munged, slurmctld and slurmd on loopback: one node with this machine's CPUs (at least 2), one partition."""

    directory: Path
    programs: dict[str, str]

    def __post_init__(self) -> None:
        self.conf = self.directory / "slurm.conf"
        self.node = socket.gethostname().split(".")[0]
        self.env = {**os.environ, "SLURM_CONF": str(self.conf)}
        self.daemons: list[subprocess.Popen] = []

    def start(self) -> None:
        d = self.directory
        for sub in ("munge", "state", "spool", "log"):
            (d / sub).mkdir(mode=0o755)
        key = d / "munge" / "munge.key"
        key.write_bytes(os.urandom(1024))
        key.chmod(0o600)
        socket_path = d / "munge" / "munge.socket"
        self._daemon(
            "munged",
            "--foreground",
            "--force",
            f"--socket={socket_path}",
            f"--key-file={key}",
            f"--pid-file={d / 'munge' / 'munged.pid'}",
            f"--log-file={d / 'log' / 'munged.log'}",
            f"--seed-file={d / 'munge' / 'munged.seed'}",
        )
        self._until(socket_path.exists, "munged did not create its socket")
        cpus = max(2, os.cpu_count() or 1)
        self.conf.write_text(
            "\n".join(
                [
                    "ClusterName=landscape-test",
                    f"SlurmctldHost={self.node}(127.0.0.1)",
                    f"SlurmctldPort={free_port()}",
                    f"SlurmdPort={free_port()}",
                    "SlurmUser=root",
                    "SlurmdUser=root",
                    "AuthType=auth/munge",
                    "CredType=cred/munge",
                    f"AuthInfo=socket={socket_path}",
                    f"StateSaveLocation={d / 'state'}",
                    f"SlurmdSpoolDir={d / 'spool'}",
                    f"SlurmctldPidFile={d / 'slurmctld.pid'}",
                    f"SlurmdPidFile={d / 'slurmd.pid'}",
                    f"SlurmctldLogFile={d / 'log' / 'slurmctld.log'}",
                    f"SlurmdLogFile={d / 'log' / 'slurmd.log'}",
                    "MailProg=/bin/true",
                    # No cgroups (containers often have none): processes are tracked through /proc.
                    "ProctrackType=proctrack/linuxproc",
                    "TaskPlugin=task/none",
                    "JobAcctGatherType=jobacct_gather/none",
                    "AccountingStorageType=accounting_storage/none",
                    "MpiDefault=none",
                    # CPUs are consumable, so the array's 1-CPU tasks run side by side on the one node.
                    "SelectType=select/cons_tres",
                    "SelectTypeParameters=CR_CPU",
                    "SchedulerType=sched/builtin",
                    "SlurmdParameters=config_overrides",
                    "ReturnToService=2",
                    "JobRequeue=0",
                    "KillWait=30",  # the default: SIGTERM, then SIGKILL 30 s later
                    "MinJobAge=600",  # finished jobs stay visible to scontrol for the test's checks
                    f"NodeName={self.node} NodeAddr=127.0.0.1 CPUs={cpus} State=UNKNOWN",
                    f"PartitionName=test Nodes={self.node} Default=YES MaxTime=INFINITE State=UP",
                    "",
                ]
            )
        )
        self._daemon("slurmctld", "-D", "-c", "-f", str(self.conf))
        self._until(lambda: "UP" in self.run("scontrol", "ping", check=False).stdout, "slurmctld did not start")
        self._daemon("slurmd", "-D", "-N", self.node, "-f", str(self.conf))
        self._until(self._node_idle, "the node did not come up idle")

    def _node_idle(self) -> bool:
        return self.run("sinfo", "-h", "-n", self.node, "-o", "%T", check=False).stdout.strip() == "idle"

    def stop(self) -> None:
        """Cancel what still runs (after a failure), then stop the daemons."""
        if any(d.poll() is None for d in self.daemons[1:]):
            self.run("scancel", "--full", "--user", "root", check=False)
            deadline = time.monotonic() + 60
            while self.run("squeue", "-h", "-o", "%i", check=False).stdout.strip() and time.monotonic() < deadline:
                time.sleep(1)
        for daemon in reversed(self.daemons):
            if daemon.poll() is None:
                daemon.send_signal(signal.SIGTERM)
                try:
                    daemon.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    daemon.kill()
                    daemon.wait()

    def run(self, *command: str, check: bool = True) -> subprocess.CompletedProcess:
        result = subprocess.run(
            [self.programs[command[0]], *command[1:]], capture_output=True, text=True, env=self.env, timeout=60
        )
        if check:
            assert result.returncode == 0, f"{shlex.join(command)}: {result.stdout}{result.stderr}\n{self.logs()}"
        return result

    def tasks(self, job: str) -> dict[int, dict[str, str]]:
        """The array's tasks by index: each one's ``scontrol show job`` fields (JobState, ExitCode, ...)."""
        tasks = {}
        for line in self.run("scontrol", "-o", "show", "job", job).stdout.splitlines():
            fields = dict(word.split("=", 1) for word in line.split() if "=" in word)
            tasks[int(fields["ArrayTaskId"])] = fields
        return tasks

    def wait(self, job: str, timeout: float = 300) -> dict[int, dict[str, str]]:
        """Wait until every task of array ``job`` has ended; their fields."""
        deadline = time.monotonic() + timeout
        while self.run("squeue", "-h", "-j", job, "-o", "%i", check=False).stdout.strip():
            if time.monotonic() > deadline:
                raise AssertionError(f"array job {job} did not end in {timeout:.0f} s\n{self.logs()}")
            time.sleep(1)
        return self.tasks(job)

    def logs(self) -> str:
        return "\n".join(
            f"--- {path.name}\n{path.read_text(errors='replace')[-2000:]}"
            for path in sorted(self.directory.rglob("*.log"))
        )

    def _daemon(self, name: str, *args: str) -> None:
        log = open(self.directory / "log" / f"{name}.out", "w")  # noqa: SIM115 - the daemon writes it until stop()
        self.daemons.append(
            subprocess.Popen([self.programs[name], *args], stdout=log, stderr=subprocess.STDOUT, env=self.env)
        )
        log.close()

    def _until(self, condition, failure: str, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while not condition():
            if time.monotonic() > deadline or any(d.poll() is not None for d in self.daemons):
                raise AssertionError(f"{failure}\n{self.logs()}")
            time.sleep(0.3)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory) -> Iterator[SlurmCluster]:
    programs = require_slurm()
    cluster = SlurmCluster(tmp_path_factory.mktemp("slurm"), programs)
    try:
        cluster.start()
        with pytest.MonkeyPatch.context() as patch:
            patch.setenv("SLURM_CONF", str(cluster.conf))  # for sbatch run by `python -m sweeps.slurm --submit`
            patch.setenv("PATH", SEARCH_PATH)
            yield cluster
    finally:
        cluster.stop()


@dataclass(frozen=True)
class Services:
    storage: str
    tracking: str
    directory: Path


@pytest.fixture(scope="module")
def services(tmp_path_factory) -> Iterator[Services]:
    """One scratch Optuna database and one MLflow server (PostgreSQL backend) that the array jobs share."""
    directory = tmp_path_factory.mktemp("slurm-services")
    with scratch_databases("optuna", "mlflow") as (optuna_url, mlflow_url), mlflow_server(mlflow_url, directory) as url:
        yield Services(optuna_url, url, directory)


def submit(services: Services, study: str, tmp_path: Path, sweep: list[str], capsys) -> str:
    """``python -m sweeps.slurm --submit``: a 2-task array on ``study``; the array's job id."""
    args = ["--tasks", "2", "--cpus-per-task", "1", "--job-name", study, "--log-dir", str(tmp_path / "logs")]
    args += ["--chdir", str(REPO), "--script", str(tmp_path / f"{study}.sbatch"), "--submit"]
    args += ["--storage", services.storage, "--tracking-uri", services.tracking, "--heartbeat", str(HEARTBEAT)]
    args += ["--", "--study-name", study, "--root", str(tmp_path / "unused-mlruns"), *sweep]
    status = slurm.main(args)
    out = capsys.readouterr().out
    assert status == 0, out
    return out.split("submitted array job ", 1)[1].split()[0]


def task_logs(tmp_path: Path) -> dict[int, str]:
    """Each task's log by array index (``<job name>-<array job id>_<index>.out``)."""
    return {int(p.stem.rsplit("_", 1)[1]): p.read_text() for p in (tmp_path / "logs").glob("*.out")}


def failure_report(tasks, logs, cluster: SlurmCluster) -> str:
    """What a failed assertion shows: the tasks' states, their logs, the daemons' logs."""
    shown = "\n".join(f"--- task {i}\n{log[-3000:]}" for i, log in sorted(logs.items()))
    return f"tasks: {tasks}\n{shown}\n{cluster.logs()}"


def load(services: Services, study: str) -> optuna.Study:
    return optuna.load_study(study_name=study, storage=open_storage(services.storage))


def children_and_parent(services: Services, study: optuna.Study):
    """The study's trial runs and its parent run."""
    client = MlflowClient(tracking_uri=services.tracking)
    experiment = client.get_experiment_by_name("seeds")
    runs = client.search_runs([experiment.experiment_id], filter_string=f"tags.study = '{study.study_name}'")
    parent = client.get_run(study.user_attrs["mlflow_parent_run_id"])
    return [r for r in runs if r.data.tags.get("run_kind") == "trial"], parent


def test_an_array_of_two_tasks_runs_each_seed_of_the_study_once(cluster, services, tmp_path, capsys):
    job = submit(services, "slurm-array", tmp_path, ["--n", "4", *FAST], capsys)
    tasks = cluster.wait(job)
    logs = task_logs(tmp_path)
    report = failure_report(tasks, logs, cluster)
    assert sorted(tasks) == [0, 1] and sorted(logs) == [0, 1], report
    for task in tasks.values():
        assert task["JobState"] == "COMPLETED" and task["ExitCode"] == "0:0", report
    for log in logs.values():
        assert "study slurm-array" in log and "Traceback" not in log, report

    study = load(services, "slurm-array")
    complete = [t for t in study.trials if t.state == TrialState.COMPLETE]
    assert sorted(t.params["seed"] for t in complete) == [1, 2, 3, 4], report
    for trial in study.trials:  # the rest: copies of a point, enqueued by both tasks, dropped before they log
        if trial.state != TrialState.COMPLETE:
            assert trial.state == TrialState.FAIL and "mlflow_run_id" not in trial.user_attrs, trial

    children, parent = children_and_parent(services, study)
    assert parent.info.status == "FINISHED"
    assert {c.data.tags["mlflow.parentRunId"] for c in children} == {parent.info.run_id}
    assert sorted(int(c.data.tags["seed"]) for c in children) == [1, 2, 3, 4]
    assert all(c.info.status == "FINISHED" for c in children)
    assert {t.user_attrs["mlflow_run_id"] for t in complete} == {c.info.run_id for c in children}
    assert not (tmp_path / "unused-mlruns").exists(), "with a server and a database nothing goes to a local store"
    print(f"\nslurm-array: {len(complete)} complete, {len(study.trials) - len(complete)} dropped copies; ", end="")
    print(f"trials by worker: {sorted({c.data.tags['worker'] for c in children})}")


def running_trial_of_a_task(services: Services, study: str, cluster: SlurmCluster, job: str) -> tuple[FrozenTrial, str]:
    """The first trial seen RUNNING with its MLflow run started, and the array task (``<job>_<index>``) running it:
    the worker is the task's batch step (the script ``exec``s it), whose environment names the task."""
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        try:
            running = load(services, study).get_trials(deepcopy=False, states=(TrialState.RUNNING,))
        except KeyError:  # no task has created the study yet
            running = []
        for trial in running:
            if "mlflow_run_id" in trial.user_attrs:
                pid = int(trial.user_attrs["worker"].rpartition(":")[2])
                try:
                    environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
                except FileNotFoundError:  # its worker ended in between: wait for the next trial
                    continue
                env = dict(item.decode().split("=", 1) for item in environ if b"=" in item)
                assert env["SLURM_ARRAY_JOB_ID"] == job, env.get("SLURM_ARRAY_JOB_ID")
                return trial, f"{job}_{env['SLURM_ARRAY_TASK_ID']}"
        if not cluster.run("squeue", "-h", "-j", job, "-o", "%i", check=False).stdout.strip():
            raise AssertionError(f"array {job} ended before a trial ran")
        time.sleep(0.2)
    raise AssertionError("no trial started running in time")


def test_scancel_of_a_task_mid_trial_kills_its_run_and_the_other_task_finishes_every_seed_once(
    cluster, services, tmp_path, capsys
):
    job = submit(services, "slurm-scancel", tmp_path, ["--n", "4", *SLOW], capsys)
    victim, task = running_trial_of_a_task(services, "slurm-scancel", cluster, job)
    cluster.run("scancel", task)
    tasks = cluster.wait(job)
    logs = task_logs(tmp_path)
    report = failure_report(tasks, logs, cluster)
    killed, survivor = int(task.rpartition("_")[2]), 1 - int(task.rpartition("_")[2])
    # The worker got SIGTERM and ended the trial itself: exit status 143, not death by SIGKILL (0:9).
    assert tasks[killed]["JobState"] == "CANCELLED" and tasks[killed]["ExitCode"] == "143:0", report
    assert "interrupted:" in logs[killed] and "Traceback" not in logs[killed], report
    assert tasks[survivor]["JobState"] == "COMPLETED" and tasks[survivor]["ExitCode"] == "0:0", report

    study = load(services, "slurm-scancel")
    complete = [t for t in study.trials if t.state == TrialState.COMPLETE]
    assert sorted(t.params["seed"] for t in complete) == [1, 2, 3, 4], report
    assert study.trials[victim.number].state == TrialState.FAIL
    (rerun,) = [t for t in complete if t.params["seed"] == victim.params["seed"]]
    assert rerun.user_attrs["worker"] != victim.user_attrs["worker"], "the other task reran the killed point"

    client = MlflowClient(tracking_uri=services.tracking)
    run = client.get_run(victim.user_attrs["mlflow_run_id"])
    assert run.info.status == "KILLED" and run.data.tags["failure"] == "Terminated"
    children, parent = children_and_parent(services, study)
    assert parent.info.status == "FINISHED"
    population = load_population(TrackingStore.resolve(services.tracking), study="slurm-scancel")
    assert sorted(population.seeds.tolist()) == [1, 2, 3, 4] and population.n_duplicates == 0
    assert population.n_not_finished == {"KILLED": 1}
    print(
        f"\nslurm-scancel: killed task {task} in trial {victim.number} (seed {victim.params['seed']}); "
        f"{len(complete)} complete, {len(study.trials) - len(complete)} failed or dropped; "
        f"runs {sorted(c.info.status for c in children)}"
    )
