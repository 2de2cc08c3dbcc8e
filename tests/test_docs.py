"""The documentation site: `mkdocs build --strict` (no broken link, no page outside the nav that matters), every
internal link and image of the built pages resolves, the generated reference holds every config key and command,
and headless Chromium renders the index and a results page with its figures."""
import os
import re
import shutil
import subprocess
import sys
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import unquote, urldefrag

import pytest

from editharm import reference

REPO = Path(__file__).resolve().parents[1]
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


class _Refs(HTMLParser):
    def __init__(self):
        super().__init__()
        self.refs: list[str] = []

    def handle_starttag(self, tag, attrs):
        for key, value in attrs:
            if key in ("href", "src") and value:
                self.refs.append(value)


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("site")
    mkdocs = Path(sys.executable).with_name("mkdocs")
    proc = subprocess.run([str(mkdocs), "build", "--strict", "-d", str(out)], cwd=REPO, capture_output=True, text=True,
                          timeout=300, env={**os.environ, "NO_MKDOCS_2_WARNING": "1"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    return out


def test_every_internal_link_and_image_resolves(site):
    broken = []
    for page in site.rglob("*.html"):
        parser = _Refs()
        parser.feed(page.read_text(encoding="utf-8"))
        for ref in parser.refs:
            target = unquote(urldefrag(ref)[0])
            if not target or re.match(r"^[a-z]+:", target):  # same page, or http(s)/mailto/data
                continue
            path = (site / target.lstrip("/") if target.startswith("/") else page.parent / target).resolve()
            if path.is_dir():
                path = path / "index.html"
            if not path.exists():
                broken.append(f"{page.relative_to(site)} -> {ref}")
    assert not broken, broken[:20]


def test_the_reference_is_generated_from_the_code(site):
    config = (site / "reference" / "config" / "index.html").read_text(encoding="utf-8")
    for key, *_ in [*reference.rows(__import__("editharm.config").config.ModelConfig, "model."),
                    ("method.v_num_grad_steps",), ("guard.k",), ("tasks.limit",), ("devices",)]:
        assert f"<code>{key}</code>" in config, key
    assert "Spread the model over devices with accelerate" in config  # model.device_map's docstring
    cli = (site / "reference" / "cli" / "index.html").read_text(encoding="utf-8")
    for command in ("edit", "evaluate", "stats", "train-mend", "experiment", "report", "checkpoint"):
        assert f"editharm {command}" in cli and "--quiet" in cli


def test_chromium_renders_the_index_and_a_results_page_with_its_figures(site, tmp_path):
    if CHROMIUM is None:
        if os.environ.get("EDITHARM_REQUIRE_BROWSER") == "1":
            pytest.fail("EDITHARM_REQUIRE_BROWSER=1 but no chromium on PATH (apt-get install chromium)")
        pytest.skip("no chromium on PATH")
    from tests.test_browser import _coloured

    def shot(page: str) -> tuple[Path, str]:
        url = (site / page).as_uri()
        png = tmp_path / (page.replace("/", "_") + ".png")
        flags = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--window-size=1400,2400",
                 "--virtual-time-budget=10000", "--allow-file-access-from-files"]
        subprocess.run([*flags, f"--screenshot={png}", url], capture_output=True, timeout=120)
        dom = subprocess.run([*flags, "--dump-dom", url], capture_output=True, text=True, timeout=120).stdout
        return png, dom

    index, dom = shot("index.html")
    assert "Reproducing Gu et al." in dom and index.stat().st_size > 10_000
    results, dom = shot("results/gu2024-sequential/index.html")
    assert dom.count("<img") >= 3 and "abilities.png" in dom
    # the report figure's line colours (matplotlib C0/C1) are in the rendered page: the images loaded
    assert _coloured(results, (31, 119, 180)) + _coloured(results, (255, 127, 14)) > 500


# Commands of the docs that other tests (or CI) run for real, by prefix.
RUN_ELSEWHERE = {
    "bash scripts/server.sh": "tests/test_server.py", "pip install 'editharm[server]'": "requirements.lock (CI)",
    "export MLFLOW_TRACKING_URI": "tests/test_server.py", "source .venv/bin/activate": "CI's environment",
    "bash scripts/main.sh": "the main job (scripts/main.sh = editharm edit)", "bash scripts/test.sh": ".ci/run",
    ".venv/bin/mlflow ui": "tests/test_browser.py",
}


def _docs_commands() -> list[tuple[str, str]]:
    out = []
    for page in sorted((REPO / "docs").rglob("*.md")):
        for block in re.findall(r"```bash\n(.*?)```", page.read_text(encoding="utf-8"), flags=re.S):
            for line in block.splitlines():
                line = re.sub(r"\s+#\s.*$", "", line).strip()
                if line:
                    out.append((str(page.relative_to(REPO)), line))
    return out


def test_every_docs_command_is_valid_as_written(env):
    """Each `editharm` command of the docs composes its config (or grid, or arguments) without an error, each
    `mlflow run` names an entry point and parameters the MLproject has; the rest is run by the test named for it
    (a command of neither kind fails here until it is handled)."""
    import shlex

    import yaml

    from editharm import config, grid
    from editharm.__main__ import parser

    project = yaml.safe_load((REPO / "MLproject").read_text())["entry_points"]
    for page, line in _docs_commands():
        words = [w.replace("<RUN_ID>", "0" * 32).replace("<PARENT_RUN_ID>", "0" * 32) for w in shlex.split(line)]
        if any(line.startswith(prefix) for prefix in RUN_ELSEWHERE):
            continue
        if words[:2] in (["editharm", "edit"], ["editharm", "evaluate"]):
            if any(w.startswith("model=hf:") for w in words):
                continue  # a path of the reader's: tests/test_readme.py runs the README's hf: command on a folder
            config.load([w for w in words[2:] if not w.startswith("resume=")])
        elif words[:2] == ["editharm", "experiment"]:
            assert grid.cells(grid.load(words[2]), words[3:]), (page, line)
        elif words[0] == "editharm":
            parser().parse_args(words[1:])
        elif words[:2] == ["mlflow", "run"]:
            entry = words[words.index("-e") + 1] if "-e" in words else "main"
            params = [w.split("=", 1)[0] for i, w in enumerate(words) if i and words[i - 1] == "-P"]
            assert entry in project and set(params) <= set(project[entry]["parameters"]), (page, line)
        else:
            raise AssertionError(f"{page}: command with no test: {line!r}")
