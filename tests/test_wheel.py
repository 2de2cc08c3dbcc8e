"""The built wheel, installed into a fresh virtual environment outside the checkout, runs an edit from another
folder (its configs ship inside it), then one with a config file of the user's own on the search path."""
import os
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
BASE = ["edits.n=2", "edits.eval_every=2", "tasks.names=[]", "probe.perplexity=false", "tracking.log_checkpoint=false",
        "tracking.log_model=false"]


def _tracked(*paths: str) -> list[str]:
    return subprocess.run(["git", "ls-files", *paths], cwd=REPO, capture_output=True, text=True,
                          check=True).stdout.split()


@pytest.mark.slow
def test_the_wheel_runs_outside_the_checkout(env, tmp_path):
    source = tmp_path / "source"  # the tracked files alone: no stale build/ of the checkout can leak into the wheel
    subprocess.run(["git", "worktree", "add", "--detach", "-q", str(source)], cwd=REPO, check=True)
    try:
        subprocess.run(["git", "checkout", "-q", "--detach"], cwd=source, check=True)
        for rel in _tracked():  # the working tree's tracked files, committed or not
            target = source / rel
            if (REPO / rel).is_file() and not (REPO / rel).is_symlink():
                target.write_bytes((REPO / rel).read_bytes())
        dist = tmp_path / "dist"
        subprocess.run([sys.executable, "-m", "pip", "wheel", str(source), "--no-deps", "--no-build-isolation", "-q",
                        "-w", str(dist)], check=True, cwd=tmp_path)
    finally:
        subprocess.run(["git", "worktree", "remove", "--force", str(source)], cwd=REPO, check=False)
    (wheel,) = dist.glob("editharm-*.whl")
    with zipfile.ZipFile(wheel) as z:
        shipped = set(z.namelist())
    wanted = {f"editharm/configs/{rel.removeprefix('configs/')}" for rel in _tracked("configs")}
    wanted |= {rel.removeprefix("src/") for rel in _tracked("src/editharm") if not rel.endswith("/configs")}
    assert wanted <= shipped, sorted(wanted - shipped)[:10]  # every config, module, report table and network
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    site = Path(subprocess.run([venv / "bin" / "python", "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                               capture_output=True, text=True, check=True).stdout.strip())
    (site / "dependencies.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")  # torch & co., not editharm
    subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target", str(site), str(wheel)],
                   check=True)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    python = str(venv / "bin" / "python")

    def run(*argv: str) -> subprocess.CompletedProcess:
        return subprocess.run([python, *argv], cwd=elsewhere, capture_output=True, text=True, timeout=600,
                              env={**os.environ, "PYTHONPATH": ""})

    where = run("-c", "import editharm.config as c; print(c.__file__); print(c.config_dir())")
    assert where.returncode == 0, where.stderr[-2000:]
    module, configs = where.stdout.split()
    assert module.startswith(str(site)) and configs.startswith(str(site))  # the wheel's code and configs
    done = run("-m", "editharm", "edit", "method=ft", "model=tiny-llama", *BASE)
    assert done.returncode == 0, done.stderr[-3000:]
    mine = tmp_path / "mine" / "model"
    mine.mkdir(parents=True)
    (mine / "tiny-mine.yaml").write_text((REPO / "configs" / "model" / "tiny-llama.yaml").read_text().replace(
        "seed: 0", "seed: 7"))
    done = run("-m", "editharm", "--config-dir", str(mine.parent), "edit", "method=ft", "model=tiny-mine", *BASE)
    assert done.returncode == 0, done.stderr[-3000:]
    refused = run("-m", "editharm", "edit", "method=ft", "model=tiny-mine", *BASE)  # not on the search path
    assert refused.returncode == 2 and "unknown model 'tiny-mine'" in refused.stderr
