"""pytest-embedded wiring: target gating, variant -> build dir, a real board vs the virtual board.

    pytest                                          host tests; board tests skip, exit 0
    pytest --virtual-board                          + target tests against a virtual board
    pytest --target esp32s3 --port=/dev/ttyUSB0     target tests on a board (write --port= with '=')

A board test is marked `board` (tests_target/) and parametrized over the variants with `config`
(idf-ci's name), which picks `firmware/build_<target>_<config>/`. The board runs ONCE per variant per
session: the first board test of a variant opens the `dut` (flash + reset at a bench; a fresh virtual
board otherwise), runs the session and caches the outcome; the variant's other tests read the cache.
Every run with a board writes results/<UTC timestamp>/ (report.md/.json/.png, junit.xml, dut-logs/).
"""

from __future__ import annotations

import datetime as _dt
import os
from pathlib import Path

import pytest

from quant.paths import FIRMWARE, REPO, VARIANTS

TARGET = "esp32s3"
HOW_TO_RUN = (
    "no board: at a bench run `pytest --target esp32s3 --port=/dev/ttyUSB0 tests_target` "
    "(with '=' after --port) or set ESPPORT; without a board run `pytest --virtual-board tests_target`"
)

_OUTCOMES = pytest.StashKey[dict]()  # variant -> quant.board.session.BoardOutcome
_RESULTS = pytest.StashKey[dict]()  # variant -> {test name: (outcome, first line of the message)}
_RUN_DIR = pytest.StashKey[object]()  # Path of this run's results, or None (no board)
_REPORT = pytest.StashKey[object]()  # what the report step produced: paths, or an error text


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("gesture board", "gesture-model target tests")
    group.addoption("--virtual-board", action="store_true",
                    help="run the board tests against a virtual board (quant virtual-board) instead of a chip")
    group.addoption("--virtual-fault", default="none", metavar="NAME",
                    help="inject this fault into the virtual board (see quant.board.virtual.FAULTS)")
    group.addoption("--board-timeout", type=float, default=25.0, metavar="SECONDS",
                    help="fail a board session after this many seconds without output (default: %(default)s)")
    group.addoption("--models-dir", default=None, metavar="DIR",
                    help="the variant folders to test against (default: models/)")
    group.addoption("--results-dir", default=None, metavar="DIR",
                    help="where this run's report, junit.xml and dut-logs go (default: results/<UTC timestamp>/)")


def _mode(config: pytest.Config) -> str | None:
    """'virtual', 'chip', or None (no board: board tests skip)."""
    if config.getoption("virtual_board"):
        return "virtual"
    if config.getoption("port", None) or os.environ.get("ESPPORT"):
        return "chip"
    return None


def _new_run_dir() -> Path:
    stamp = _dt.datetime.now(_dt.timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    for n in range(1, 1000):
        path = REPO / "results" / (stamp if n == 1 else f"{stamp}-{n}")
        try:
            path.mkdir(parents=True)
            return path
        except FileExistsError:
            continue
    raise pytest.UsageError(f"could not create a results folder under {REPO / 'results'}")


@pytest.hookimpl(tryfirst=True)  # before junitxml and pytest-embedded read --junitxml / --root-logdir
def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "board: needs an ESP32-S3 board (--port=...) or the virtual board (--virtual-board)")
    mode = _mode(config)
    if config.getoption("virtual_fault") != "none" and mode != "virtual":
        raise pytest.UsageError("--virtual-fault needs --virtual-board")
    if mode == "virtual" and config.getoption("port", None):
        raise pytest.UsageError("--virtual-board and --port exclude each other: pick the virtual board or a chip")
    if mode == "virtual":
        from quant.board.virtual import FAULTS

        if config.getoption("virtual_fault") not in FAULTS:
            raise pytest.UsageError(f"--virtual-fault {config.getoption('virtual_fault')!r} is unknown; "
                                    f"choose one of {', '.join(FAULTS)}")
    config.stash[_OUTCOMES] = {}
    config.stash[_RESULTS] = {}
    run_dir = None
    if mode and not hasattr(config, "workerinput"):
        given = config.getoption("results_dir")
        run_dir = Path(given).resolve() if given else _new_run_dir()
        run_dir.mkdir(parents=True, exist_ok=True)
        if not config.option.root_logdir:
            config.option.root_logdir = str(run_dir / "dut-logs")
        if not config.option.xmlpath:
            config.option.xmlpath = str(run_dir / "junit.xml")
    config.stash[_RUN_DIR] = run_dir


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    mode = _mode(config)
    target = config.getoption("target", None)
    for item in items:
        if item.get_closest_marker("board") is None:
            continue
        if mode is None:
            item.add_marker(pytest.mark.skip(reason=HOW_TO_RUN))
        elif target and target != TARGET:
            item.add_marker(pytest.mark.skip(reason=f"board tests are for {TARGET}; this run is for --target {target}"))


# ---------------------------------------------------------------------------------------------
# fixtures: which variant, and pytest-embedded's fixtures pointed at it


@pytest.fixture
def config(request: pytest.FixtureRequest) -> str:
    """The variant a board test runs (idf-ci's `config`: sdkconfig.ci.<config>)."""
    return getattr(request, "param", None) or "default"


@pytest.fixture
def variant(config: str) -> str:
    if config not in VARIANTS:
        raise pytest.UsageError(f"config {config!r} is not a variant; parametrize with one of {VARIANTS}")
    return config


def _models(config: pytest.Config) -> Path:
    from quant.paths import MODELS

    given = config.getoption("models_dir")
    return Path(given).resolve() if given else MODELS


def _is_board(request: pytest.FixtureRequest) -> bool:
    return request.node.get_closest_marker("board") is not None


def _virtual(request: pytest.FixtureRequest) -> bool:
    return bool(request.config.getoption("virtual_board"))


@pytest.fixture
def embedded_services(embedded_services, request):
    if not _is_board(request):
        return embedded_services
    return "serial" if _virtual(request) else (embedded_services or "esp,idf")


@pytest.fixture
def target(target, request):
    if not _is_board(request):
        return target
    return TARGET if _virtual(request) else (target or TARGET)


@pytest.fixture
def app_path(request) -> str:
    # (replaces pytest-embedded's, which calls the experimental record_xml_attribute on every test)
    given = request.config.getoption("app_path", None)
    return given or (str(FIRMWARE) if _is_board(request) else os.path.dirname(request.module.__file__))


@pytest.fixture
def build_dir(build_dir, request, app_path, target, config):
    if not _is_board(request) or _virtual(request) or request.config.getoption("build_dir", None):
        return build_dir  # (pytest-embedded's default is 'build'; an explicit --build-dir wins)
    return str(Path(app_path) / f"build_{target}_{config}")


@pytest.fixture
def port(port, request, config):
    """On the virtual board: a fresh board for the first test of each variant (stopped after it)."""
    if not (_is_board(request) and _virtual(request)):
        return port
    outcomes = request.config.stash[_OUTCOMES]
    if config in outcomes:
        return None  # this variant already ran; its tests read the cache
    from quant.board.session import BoardOutcome
    from quant.board.virtual import start

    try:
        board = start(config, fault=request.config.getoption("virtual_fault"), models_dir=_models(request.config))
    except Exception as exc:  # noqa: BLE001  (every reason fails the variant's tests, with the reason)
        outcomes[config] = BoardOutcome(config, virtual=True, models=_models(request.config),
                                        error=f"{config}: could not start the virtual board: {exc}")
        return None
    request.addfinalizer(board.stop)
    return board.port


@pytest.fixture
def board(request, variant, record_property):
    """The variant's board outcome; the board runs on first use, later tests read the cache."""
    outcomes = request.config.stash[_OUTCOMES]
    if variant not in outcomes:
        outcomes[variant] = _run_once(request, variant)
    outcome = outcomes[variant]
    record_property("variant", variant)
    record_property("board", "virtual" if outcome.virtual else "chip")
    if outcome.log_path:
        record_property("dut_log", outcome.log_path)
    return _Board(outcome)


class _Board:
    """A variant's BoardOutcome as its tests see it. When the board session failed, the first use
    fails the test (in the test, not in its setup: a failed board is a failed check, not an error)."""

    def __init__(self, outcome):
        self._outcome = outcome

    def __getattr__(self, name):
        if self._outcome.error:
            pytest.fail(self._outcome.error, pytrace=False)
        return getattr(self._outcome, name)


def _run_once(request, variant):
    from quant.board import session as board_session

    virtual = _virtual(request)
    if not virtual:
        problem = board_session.ensure_firmware(variant)
        if problem:
            return board_session.BoardOutcome(variant, virtual=False, models=_models(request.config),
                                              error=f"{variant}: {problem}")
    try:
        dut = request.getfixturevalue("dut")
    except Exception as exc:  # noqa: BLE001  (esptool, serial and build-dir errors all land here)
        where = request.getfixturevalue("port") or os.environ.get("ESPPORT") or "no port"
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        hint = ("" if virtual else f" (flashing {request.getfixturevalue('build_dir')}); check the cable, the "
                "port (--port=/dev/ttyUSB0) and that nothing else holds it")
        return board_session.BoardOutcome(
            variant, virtual=virtual, models=_models(request.config),
            error=f"{variant}: pytest-embedded could not open the board on {where}: {type(exc).__name__}: {first}{hint}",
        )
    return board_session.run_variant(dut, variant, virtual=virtual, models=_models(request.config),
                                     timeout_s=request.config.getoption("board_timeout"))


# ---------------------------------------------------------------------------------------------
# results of every board test, and the run's report


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item, call):
    report = yield
    callspec = getattr(item, "callspec", None)
    if item.get_closest_marker("board") is not None and callspec is not None and "config" in callspec.params:
        if report.when == "call" or report.outcome != "passed":
            text = report.longreprtext.strip() if report.longrepr else ""
            if report.skipped and isinstance(report.longrepr, tuple):
                text = report.longrepr[2]
            item.config.stash[_RESULTS].setdefault(callspec.params["config"], {})[item.originalname] = (
                report.outcome, text)
    return report


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    config = session.config
    run_dir = config.stash.get(_RUN_DIR, None)
    outcomes = config.stash.get(_OUTCOMES, {})
    if run_dir is None or not outcomes:
        return
    from quant.board import report as board_report

    try:
        paths = board_report.write_run_report(
            Path(run_dir), outcomes, config.stash[_RESULTS],
            fault=config.getoption("virtual_fault") if _mode(config) == "virtual" else None,
            junit=config.option.xmlpath, dut_logs=config.option.root_logdir,
        )
        config.stash[_REPORT] = paths
    except Exception as exc:  # noqa: BLE001  (a report failure is shown, and fails the run)
        config.stash[_REPORT] = f"the board report could not be written: {type(exc).__name__}: {exc}"
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


def pytest_terminal_summary(terminalreporter, exitstatus, config) -> None:
    done = config.stash.get(_REPORT, None)
    if done is None:
        return
    if isinstance(done, str):
        terminalreporter.write_line(f"error: {done}", red=True)
        return
    terminalreporter.write_sep("-", "board report")
    for path in done:
        terminalreporter.write_line(str(path))
