"""Run a sweep: one ``python -m fedsim run`` process per job, ``--jobs N`` at once, resumable.

runs/sweeps/<timestamp>-<name>/
    manifest.json     every job: overrides, run dir, status, error, wall time, final metrics
    <NNN>-<overrides>/  one run directory per job
    logs/<NNN>-....log  what each job printed

Rerunning the same command continues the newest unfinished sweep with the same jobs (or name it
with ``resume=<sweep dir>``): finished jobs are skipped, the others resume from their checkpoints.
"""

from __future__ import annotations

import ctypes
import json
import os
import signal
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from fedsim.config import override_key
from fedsim.errors import ConfigError
from fedsim.experiments.plan import SweepPlan
from fedsim.progress import show
from fedsim.results import RunDirectory, new_run_dir

MANIFEST = "manifest.json"
FINISHED = "done"


class Manifest:
    """``manifest.json`` of a sweep, rewritten atomically whenever a job changes state."""

    def __init__(self, folder: Path, data: dict[str, Any]) -> None:
        self.folder = folder
        self.data = data
        self._lock = threading.Lock()

    @classmethod
    def create(cls, folder: Path, plan: SweepPlan, args: list[str], threads: int) -> Manifest:
        """A new sweep folder's manifest: every job of ``plan``, pending, each to run on ``threads`` torch threads."""
        jobs = [
            {
                "index": j.index,
                "name": j.name,
                "overrides": list(j.overrides),
                "varying": list(j.varying),
                "run_dir": j.name,
                "status": "pending",
            }
            for j in plan.jobs
        ]
        manifest = cls(
            folder,
            {
                "name": plan.name,
                "args": args,
                "created": time.strftime("%Y-%m-%d %H:%M:%S"),
                "threads": threads,
                "jobs": jobs,
            },
        )
        manifest.save()
        return manifest

    @classmethod
    def load(cls, folder: Path) -> Manifest:
        """The manifest of the sweep in ``folder`` (ConfigError if there is none)."""
        path = folder / MANIFEST
        if not path.is_file():
            raise ConfigError(
                f"resume={folder}: no {MANIFEST} there; pass the directory of an earlier sweep (runs/sweeps/...)"
            )
        return cls(folder, json.loads(path.read_text()))

    @property
    def jobs(self) -> list[dict[str, Any]]:
        """Every job's record (index, name, overrides, status, timings, final metrics)."""
        return self.data["jobs"]

    def threads(self, jobs: int) -> int:
        """The torch threads every job of this sweep runs on, fixed when the sweep started.

        A sweep started with ``--jobs N`` gives each job the cores divided by N. Resumed with another
        ``--jobs``, it keeps that count, so that its jobs' configs (and so their metrics: torch's sums
        follow the thread count) do not depend on how it was resumed. A manifest written before the count
        was recorded takes this invocation's.
        """
        if "threads" not in self.data:
            self.data["threads"] = threads_per_job(jobs)
            self.save()
        return int(self.data["threads"])

    def unfinished(self) -> list[dict[str, Any]]:
        """The jobs not yet done."""
        return [j for j in self.jobs if j["status"] != FINISHED]

    def update(self, index: int, **fields: Any) -> None:
        """Change a job's record and save."""
        with self._lock:
            self.jobs[index].update(fields)
            self.save()

    def save(self) -> None:
        """Write ``manifest.json`` atomically."""
        tmp = self.folder / (MANIFEST + ".tmp")
        tmp.write_text(json.dumps(self.data, indent=1) + "\n")
        os.replace(tmp, self.folder / MANIFEST)


def threads_per_job(jobs: int) -> int:
    """The cores divided by the jobs run at once (at least 1)."""
    return max(1, (os.cpu_count() or 1) // jobs)


def find_unfinished(sweeps_root: Path, plan: SweepPlan) -> Path | None:
    """The newest sweep under ``sweeps_root`` with exactly ``plan``'s jobs and a job not done."""
    wanted = [list(j.overrides) for j in plan.jobs]
    for folder in sorted(sweeps_root.glob(f"*-{plan.name}"), reverse=True):
        if not (folder / MANIFEST).is_file():
            continue
        manifest = Manifest.load(folder)
        if [j["overrides"] for j in manifest.jobs] == wanted and manifest.unfinished():
            return folder
    return None


def _die_with_parent() -> None:
    """In the child: get SIGTERM when the sweep process dies (Linux), so a killed sweep leaves no orphans."""
    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except OSError:
        pass


def final_metrics(run_dir: Path) -> dict[str, Any]:
    """The figures a manifest keeps of a finished run: summary.json's and the last round's metrics."""
    summary_path, rows = run_dir / "summary.json", RunDirectory(run_dir).read_metrics()
    figures: dict[str, Any] = {}
    if rows:
        figures = {k: v for k, v in rows[-1].items() if isinstance(v, (int, float)) and not k.endswith("time_s")}
    if summary_path.is_file():
        summary = json.loads(summary_path.read_text())
        figures.update({k: summary[k] for k in ("final_test_accuracy", "best_test_accuracy") if k in summary})
    return figures


def job_command(job: dict[str, Any], folder: Path, threads: int) -> list[str]:
    """``python -m fedsim run ...`` for a job: a fresh run, or the resumption of the one it started."""
    run_dir = folder / job["run_dir"]
    if (run_dir / "config.yaml").is_file():
        return [sys.executable, "-m", "fedsim", "run", f"resume={run_dir}"]
    overrides = list(job["overrides"])
    if threads and not any(override_key(o) == "backend.num_threads" for o in overrides):
        overrides.append(f"backend.num_threads={threads}")
    return [sys.executable, "-m", "fedsim", "run", *overrides, f"run_dir={run_dir}"]


def error_line(output: list[str]) -> str:
    """The one line that says why a job failed: fedsim's error line, else the last line it printed."""
    errors = [line for line in output if line.startswith("fedsim: error:")]
    if errors:
        return errors[-1].removeprefix("fedsim: error: ")
    lines = [line for line in output if line.strip()]
    return lines[-1] if lines else "exited without output"


class SweepRunner:
    """Runs the unfinished jobs of a manifest, ``jobs`` at a time, and keeps the manifest current."""

    def __init__(self, manifest: Manifest, jobs: int) -> None:
        self.manifest = manifest
        self.parallel = jobs
        self.threads = manifest.threads(jobs)
        self.total = len(manifest.jobs)
        (manifest.folder / "logs").mkdir(exist_ok=True)
        if self.threads != threads_per_job(jobs):
            show(
                f"sweep {manifest.folder}: each job runs on {self.threads} torch threads, as when the sweep "
                f"started (the same configs whatever --jobs resumes it)"
            )

    def run_job(self, job: dict[str, Any]) -> None:
        """Run one job as a subprocess (resuming its run where it has a checkpoint), prefixing its output."""
        folder, index = self.manifest.folder, job["index"]
        tag = f"[job {index + 1}/{self.total}]"
        command = job_command(job, folder, self.threads)
        resumed = "resume=" in command[-1]
        show(f"{tag} {'resuming' if resumed else 'starting'} {' '.join(job['varying']) or job['name']}")
        self.manifest.update(index, status="running", started=time.strftime("%Y-%m-%d %H:%M:%S"))
        t0, output = time.time(), []
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        with (
            (folder / "logs" / f"{job['name']}.log").open("a") as log,
            subprocess.Popen(
                command,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
                env=env,
                preexec_fn=_die_with_parent,
            ) as proc,
        ):
            assert proc.stdout is not None
            for line in proc.stdout:
                log.write(line)
                log.flush()
                output.append(line.rstrip("\n"))
                if line.startswith("[round"):
                    show(f"{tag} {line.rstrip()}")
        seconds = time.time() - t0 + float(job.get("wall_time_s") or 0.0)
        if proc.returncode == 0:
            metrics = final_metrics(folder / job["run_dir"])
            self.manifest.update(index, status=FINISHED, error=None, wall_time_s=round(seconds, 1), final=metrics)
            accuracy = metrics.get("final_test_accuracy")
            show(
                f"{tag} done in {seconds:.1f}s"
                + (f": final test accuracy {accuracy:.4f}" if accuracy is not None else "")
            )
        else:
            reason = error_line(output)
            self.manifest.update(
                index, status="failed", error=reason, exit_code=proc.returncode, wall_time_s=round(seconds, 1)
            )
            show(f"{tag} FAILED: {reason}")

    def run(self) -> int:
        """Run what is unfinished; 0 when every job is done, 1 when any failed."""
        todo = self.manifest.unfinished()
        done = self.total - len(todo)
        show(
            f"sweep {self.manifest.folder}: {self.total} jobs, {done} already done, {len(todo)} to run, "
            f"{self.parallel} at a time"
        )
        with ThreadPoolExecutor(max_workers=self.parallel) as pool:
            list(pool.map(self.run_job, todo))
        failed = [j for j in self.manifest.jobs if j["status"] == "failed"]
        for job in failed:
            show(f"failed: {job['name']}: {job['error']}")
        show(
            f"sweep finished: {self.total - len(failed)}/{self.total} jobs done; manifest "
            f"{self.manifest.folder / MANIFEST}"
            + (f"; rerun the same command to retry the {len(failed)} failed" if failed else "")
        )
        return 1 if failed else 0


def check_jobs(plan: Any) -> None:
    """Compose and check every job's config before any job starts.

    A bad value anywhere in the sweep is one line naming the job, not a failure an hour in.
    """
    from fedsim.validation import compose_run

    for job in plan.jobs:
        try:
            compose_run(list(job.overrides))
        except ConfigError as err:
            raise ConfigError(f"sweep job {job.name}: {err}") from None


def run_sweep(args: list[str], jobs: int = 1) -> int:
    """``python -m fedsim run -m <args>``: plan the jobs, find or create the sweep dir, run it."""
    from fedsim.experiments.plan import plan_sweep

    if jobs < 1:
        raise ConfigError(f"--jobs {jobs} is invalid: expected an integer >= 1")
    resume = [a for a in args if a.split("=", 1)[0] == "resume"]
    if resume:
        folder = Path(resume[-1].split("=", 1)[1])
        manifest = Manifest.load(folder)
        show(f"continuing sweep {folder}")
    else:
        plan = plan_sweep(args)
        check_jobs(plan)
        unfinished = find_unfinished(Path(plan.runs_root) / "sweeps", plan)
        if unfinished is not None:
            manifest = Manifest.load(unfinished)
            show(f"continuing the unfinished sweep {unfinished} (same jobs)")
        else:
            manifest = Manifest.create(
                new_run_dir(Path(plan.runs_root) / "sweeps", plan.name), plan, args, threads_per_job(jobs)
            )
    return SweepRunner(manifest, jobs).run()
