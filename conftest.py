"""pytest-embedded wiring for the target tests: which board, and pytest-embedded's fixtures pointed at it.

    pytest                                          host tests; board tests skip, exit 0
    pytest --virtual-board [--models-dir DIR]       + target tests against the virtual board
    pytest --target esp32s3 --port=/dev/ttyUSB0     target tests on a chip (write --port= with '=')
    pytest --target esp32s3 --qemu tests_target     target tests on the real firmware in Espressif's QEMU

The board is a quant.board.boards.Board (ChipBoard, VirtualBoard, QemuBoard; one class per kind), chosen once per run
from the options; it builds (a chip: `quant firmware` with the models folder), starts (its port), resets,
reads and says what its results may claim. This file only routes pytest-embedded's fixtures to it.
A board test is marked `board` (tests_target/) and parametrized over the variants with `config`
(idf-ci's name). The board runs ONCE per variant per session: the first board test of a variant opens the
`dut`, runs the session and caches the outcome; the variant's other tests read the cache. A variant whose
folder is missing in --models-dir skips with the command that builds it.
Every run with a board writes results/<UTC timestamp>/ (report.md/.json/.png, junit.xml, dut-logs/)."""

from __future__ import annotations

import datetime as _dt
import os
from pathlib import Path

import pytest

from quant.board import boards
from quant.errors import UserError
from quant.folder import FIRMWARE, MODELS, REPO, VARIANTS, variant_file

TARGET = "esp32s3"
HOW_TO_RUN = (
    "no board: at a bench run `pytest --target esp32s3 --port=/dev/ttyUSB0 tests_target` "
    "(with '=' after --port) or set ESPPORT; without a board run `pytest --virtual-board tests_target`"
)

_OUTCOMES = pytest.StashKey[dict]()  # variant -> quant.board.session.BoardOutcome
_RESULTS = pytest.StashKey[dict]()  # variant -> {test name: (outcome, first line of the message)}
_RUN_DIR = pytest.StashKey[object]()  # Path of this run's results, or None (no board)
_REPORT = pytest.StashKey[object]()  # what the report step produced: paths, or an error text
_BOARD = pytest.StashKey[object]()  # this run's quant.board.boards.Board, or None


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("gesture board", "gesture-model target tests")
    for kind in boards.KINDS.values():  # each board that a flag picks (--virtual-board, ...)
        if kind.flag:
            group.addoption(kind.flag[0], action="store_true", help=kind.flag[1])
    group.addoption("--virtual-fault", default="none", metavar="NAME",
                    help="inject this fault into the virtual board (see quant.board.virtual.FAULTS)")
    group.addoption("--qemu-fault", default="none", metavar="NAME",
                    help="a drill on the real firmware in QEMU: flash it with this fault (see quant.board.flash_faults.FAULTS)")
    group.addoption("--board-timeout", type=float, default=25.0, metavar="SECONDS",
                    help="fail a board session after this many seconds without output (default: %(default)s)")
    group.addoption("--models-dir", default=None, metavar="DIR",
                    help="the variant folders to test against (default: models/)")
    group.addoption("--results-dir", default=None, metavar="DIR",
                    help="where this run's report, junit.xml and dut-logs go (default: results/<UTC timestamp>/)")


def _models(config: pytest.Config) -> Path:
    given = config.getoption("models_dir")
    return Path(given).resolve() if given else MODELS


def _select(config: pytest.Config):
    """This run's quant.board.boards.Board (virtual, a chip on --port/ESPPORT), or None: board tests skip."""
    try:
        return boards.select(lambda name: config.getoption(name, None), _models(config))
    except UserError as exc:
        raise pytest.UsageError(str(exc)) from None


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
    virtual = bool(config.getoption("virtual_board"))
    if config.getoption("virtual_fault") != "none" and not virtual:
        raise pytest.UsageError("--virtual-fault needs --virtual-board")
    if virtual:
        from quant.board.virtual import FAULTS

        if config.getoption("virtual_fault") not in FAULTS:
            raise pytest.UsageError(f"--virtual-fault {config.getoption('virtual_fault')!r} is unknown; "
                                    f"choose one of {', '.join(FAULTS)}")
    if config.getoption("qemu_fault") != "none":
        from quant.board.flash_faults import FAULTS as FLASH_FAULTS

        if not config.getoption("qemu"):
            raise pytest.UsageError("--qemu-fault needs --qemu")
        if config.getoption("qemu_fault") not in FLASH_FAULTS:
            raise pytest.UsageError(f"--qemu-fault {config.getoption('qemu_fault')!r} is unknown; "
                                    f"choose one of {', '.join(FLASH_FAULTS)}")
    board = config.stash[_BOARD] = _select(config)
    mode = board is not None and not board.unavailable()  # (an unavailable board's tests skip: no results)
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
    board = config.stash[_BOARD]
    target = config.getoption("target", None)
    models = _models(config)
    for item in items:
        if item.get_closest_marker("board") is None:
            continue
        callspec = getattr(item, "callspec", None)
        variant = callspec.params.get("config") if callspec is not None else None
        if board is None:
            item.add_marker(pytest.mark.skip(reason=HOW_TO_RUN))
        elif board.unavailable():
            item.add_marker(pytest.mark.skip(reason=board.unavailable()))
        elif target and target != TARGET:
            item.add_marker(pytest.mark.skip(reason=f"board tests are for {TARGET}; this run is for --target {target}"))
        elif variant in VARIANTS and not variant_file(variant, ".espdl", models).is_file():
            item.add_marker(pytest.mark.skip(reason=boards.missing_variant(variant, models)))


# ---------------------------------------------------------------------------------------------
# fixtures: which variant, and pytest-embedded's fixtures pointed at this run's board


@pytest.fixture
def config(request: pytest.FixtureRequest) -> str:
    """The variant a board test runs (idf-ci's `config`: sdkconfig.ci.<config>)."""
    return getattr(request, "param", None) or "default"


@pytest.fixture
def variant(config: str) -> str:
    if config not in VARIANTS:
        raise pytest.UsageError(f"config {config!r} is not a variant; parametrize with one of {VARIANTS}")
    return config


def _board_of(request: pytest.FixtureRequest):
    """The run's Board when this is a board test, else None (host tests keep pytest-embedded's defaults)."""
    if request.node.get_closest_marker("board") is None:
        return None
    return request.config.stash[_BOARD]


@pytest.fixture
def embedded_services(embedded_services, request):
    board = _board_of(request)
    return embedded_services if board is None else board.services_for(embedded_services)


@pytest.fixture
def target(target, request):
    board = _board_of(request)
    return target if board is None else (target or board.target)


@pytest.fixture
def app_path(request) -> str:
    # (replaces pytest-embedded's, which calls the experimental record_xml_attribute on every test)
    given = request.config.getoption("app_path", None)
    return given or (str(FIRMWARE) if _board_of(request) else os.path.dirname(request.module.__file__))


@pytest.fixture
def build_dir(build_dir, request, config):
    board = _board_of(request)
    if board is None or request.config.getoption("build_dir", None):
        return build_dir  # (pytest-embedded's default is 'build'; an explicit --build-dir wins)
    return board.build_dir(config) or build_dir


@pytest.fixture
def qemu_extra_args(qemu_extra_args, request, config):
    board = _board_of(request)
    if board is None or qemu_extra_args:
        return qemu_extra_args  # an explicit --qemu-extra-args= wins
    return board.qemu_extra_args(config)


@pytest.fixture
def port(port, request, config):
    """The board's port for this variant (Board.start: a virtual board starts, a chip is where it is);
    only the first test of a variant opens the board, the others read the cached outcome."""
    board = _board_of(request)
    if board is None:
        return port
    outcomes = request.config.stash[_OUTCOMES]
    if config in outcomes:
        return None  # this variant already ran; its tests read the cache
    from quant.board import session

    problem = board.build(config)
    if problem is None:
        try:
            request.addfinalizer(lambda: board.stop(config))
            return board.start(config)
        except Exception as exc:  # noqa: BLE001  (every reason fails the variant's tests, with the reason)
            problem = f"{config}: could not start the {board.kind} board: {exc}"
    outcomes[config] = session.failed(board, config, problem)
    return None


@pytest.fixture
def board(request, variant, record_property):
    """The variant's board outcome; the board runs on first use, later tests read the cache."""
    outcomes = request.config.stash[_OUTCOMES]
    if variant not in outcomes:
        outcomes[variant] = _run_once(request, variant)
    outcome = outcomes[variant]
    record_property("variant", variant)
    record_property("board", outcome.kind)
    record_property("claims", outcome.claims)
    if outcome.log_path:
        record_property("dut_log", outcome.log_path)
    if outcome.error:  # a failed board is a failed check (in the test, not an error in its setup)
        return _Failed(outcome.error)
    return outcome


class _Failed:
    """What a test of a variant whose board session failed sees: the first use fails it with the reason."""

    def __init__(self, error: str):
        self._error = error

    def __getattr__(self, name):
        pytest.fail(self._error, pytrace=False)


def _run_once(request, variant):
    from quant.board import session

    board = request.config.stash[_BOARD]
    try:
        dut = request.getfixturevalue("dut")
    except Exception as exc:  # noqa: BLE001  (esptool, serial and build-dir errors all land here)
        where = request.getfixturevalue("port") or "no port"
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        return session.failed(board, variant, f"{variant}: pytest-embedded could not open the board on {where}: "
                                              f"{type(exc).__name__}: {first}{board.open_failed(variant)}")
    return session.run_variant(dut, board, variant, timeout_s=request.config.getoption("board_timeout"))


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
            outcome = report.outcome
            if hasattr(report, "wasxfail"):  # an emulator's known error: neither a pass nor a chip failure
                outcome, text = "xfailed", report.wasxfail
            item.config.stash[_RESULTS].setdefault(callspec.params["config"], {})[item.originalname] = (
                outcome, text)
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
            fault=getattr(config.stash[_BOARD], "fault", None),  # (a board without faults: None)
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
    board = config.stash.get(_BOARD, None)
    if board is not None:
        what = {"measured": "measured on the chip",
                "virtual": "virtual: outputs computed by the host .espdl interpreter, latency and memory are .info estimates",
                "emulated": "emulated: the real firmware on QEMU, latency is emulator time"}[board.claims]
        terminalreporter.write_line(f"board: {board.kind} ({what}); models: {board.models}")
    for path in done:
        terminalreporter.write_line(str(path))
