"""Real test suites that nobody here wrote, fetched from package registries and cached on this machine.

fleetshard's runner features are proven on them (tests) and measured on them (bench/). Each helper returns
a prepared suite directory, building it once into a cache shared by every test process:

- :func:`pytest_suite` — networkx's own tests from its sdist on PyPI (``pip download --no-binary :all:``):
  the minimum-spanning-tree and drawing test packages, run in a virtualenv that holds only pytest, so that
  networkx's optional dependencies (numpy, scipy, matplotlib, pydot, pygraphviz) are missing. That gives
  module-level skips (``pytest.importorskip`` at the top of six files), an xfail, a ``collect_ignore``
  in networkx's conftest, class-based and parametrized test ids, in about 2.5 seconds.
- :func:`playwright_suite` — the demo TodoMVC e2e spec published in the ``create-playwright`` npm package
  (24 tests), run by ``@playwright/test`` from npm with Debian's ``/usr/bin/chromium`` as
  ``executablePath`` (no browser download), against the React TodoMVC app of the ``todomvc`` npm package,
  served on 127.0.0.1 by Playwright's ``webServer``. Two documented adaptations: the spec's one
  ``page.goto`` to demo.playwright.dev becomes the local ``/todomvc/`` (``baseURL``), and the app gets the
  ``data-testid``/``aria-label`` attributes that demo.playwright.dev's build of the same app carries.

``python tests/realsuites.py`` prepares them all (``.ci/run`` does that, so CI has them). In tests,
:func:`require` turns "cannot be prepared here" into a skip with the reason, or a failure on CI.

The cache lives in ``$FLEETSHARD_REALSUITES`` (default ``/tmp/fleetshard-realsuites``), readable by the
test fleet's login user.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path

NETWORKX = "networkx==3.6.1"
PYTEST_FOR_SUITE = "pytest>=8,<10"
#: the networkx test packages used: fast, and rich in collection-time skips
NETWORKX_TESTS = ("networkx/algorithms/tree/tests", "networkx/drawing/tests")

PLAYWRIGHT_TEST = "@playwright/test@1.57.0"
CREATE_PLAYWRIGHT = "create-playwright@1.17.132"      # the last versions that ship demo-todo-app.spec.ts
TODOMVC = "todomvc@0.1.1"
CHROMIUM = "/usr/bin/chromium"
#: the suite's virtualenv is made from the system's Python, which the test fleet's login user can run
#: (an interpreter under /root, pyenv's for one, is not reachable for it)
SYSTEM_PYTHON = "/usr/bin/python3"

_TIMEOUT = 600


class SuiteUnavailable(Exception):
    """A real suite cannot be prepared on this machine (no registry, no node, no chromium...)."""


@dataclass(frozen=True)
class RealSuite:
    """A prepared suite: run ``command`` (a shell line) in ``root``.

    ``runner`` is the fleetshard adapter for it; ``setup`` is what a machine whose workdir is a synced
    copy of ``root`` runs once before the suite (empty when nothing is needed). ``tests`` lists the paths
    handed to the runner (pytest) or the test files (Playwright), relative to ``root``.
    """

    name: str
    runner: str
    root: Path
    command: str
    tests: tuple[str, ...]
    setup: str = ""
    python: Path | None = None        # the interpreter that has pytest (pytest suites)

    def with_root(self, root: Path) -> RealSuite:
        return replace(self, root=root)


def cache_dir() -> Path:
    root = Path(os.environ.get("FLEETSHARD_REALSUITES") or "/tmp/fleetshard-realsuites")
    root.mkdir(parents=True, exist_ok=True)
    with contextlib.suppress(OSError):
        root.chmod(0o755)
    return root


@contextlib.contextmanager
def _locked(name: str) -> Iterator[Path]:
    """Serialize building one cached item across processes; yields its final path."""
    root = cache_dir()
    with open(root / f".{name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield root / name
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def _run(argv: list[str], *, cwd: Path | None = None, env: dict[str, str] | None = None) -> str:
    try:
        proc = subprocess.run(argv, cwd=cwd, env=env, capture_output=True, text=True, timeout=_TIMEOUT,
                              check=False, stdin=subprocess.DEVNULL)
    except FileNotFoundError as exc:
        raise SuiteUnavailable(f"`{argv[0]}` is not installed") from exc
    except subprocess.TimeoutExpired as exc:
        raise SuiteUnavailable(f"`{' '.join(argv)}` did not finish in {_TIMEOUT} s") from exc
    if proc.returncode != 0:
        tail = (proc.stderr.strip() or proc.stdout.strip()).splitlines()[-3:]
        raise SuiteUnavailable(f"`{' '.join(argv)}` exited with {proc.returncode}: {' / '.join(tail)}")
    return proc.stdout


def _build(name: str, make: Callable[[Path], None]) -> Path:
    """Build ``name`` in the cache once: ``make(tmpdir)`` fills a fresh directory that then becomes it."""
    with _locked(name) as final:
        if (final / ".complete").exists():
            return final
        shutil.rmtree(final, ignore_errors=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{name}-", dir=final.parent))
        try:
            make(tmp)
            (tmp / ".complete").write_text("ok\n")
            _readable(tmp)
            tmp.rename(final)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        return final


def _readable(root: Path) -> None:
    """Let the test fleet's login user read (and traverse) everything below ``root``."""
    for dirpath, dirnames, filenames in os.walk(root):
        for d in dirnames:
            if not os.path.islink(os.path.join(dirpath, d)):
                with contextlib.suppress(OSError):
                    os.chmod(os.path.join(dirpath, d), 0o755)
        for f in filenames:
            p = os.path.join(dirpath, f)
            if not os.path.islink(p):
                with contextlib.suppress(OSError):
                    os.chmod(p, os.stat(p).st_mode | 0o444)
    root.chmod(0o755)


# ---------------------------------------------------------------------------------------------- pytest


def _make_networkx(tmp: Path) -> None:
    sdists = tmp / "sdist"
    sdists.mkdir()
    _run([sys.executable, "-m", "pip", "download", "-q", "--no-binary", ":all:", "--no-deps",
          "-d", str(sdists), NETWORKX])
    tarballs = sorted(sdists.glob("networkx-*.tar.gz"))
    if not tarballs:
        raise SuiteUnavailable(f"pip download {NETWORKX} gave no sdist")
    with tarfile.open(tarballs[0]) as tar:
        tar.extractall(sdists, filter="data")
    unpacked = next(p for p in sdists.iterdir() if p.is_dir())
    src = tmp / "src"
    src.mkdir()
    # The package itself (imported from the source tree, as networkx's own CI does) and the chosen test
    # packages; the other test packages and the image baselines are left out to keep the copy small.
    keep = {Path(t) for t in NETWORKX_TESTS}
    for path in sorted((unpacked / "networkx").rglob("*")):
        rel = path.relative_to(unpacked)
        if not path.is_file() or "__pycache__" in rel.parts:
            continue
        if "tests" in rel.parts:
            tests_dir = Path(*rel.parts[:rel.parts.index("tests") + 1])
            if tests_dir not in keep or "baseline" in rel.parts:
                continue
        (src / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(path, src / rel)
    for extra in ("pyproject.toml", "LICENSE.txt"):
        if (unpacked / extra).exists():
            shutil.copy2(unpacked / extra, src / extra)
    venv = tmp / "venv"
    base = SYSTEM_PYTHON if Path(SYSTEM_PYTHON).exists() else sys.executable
    _run([base, "-m", "venv", str(venv)])
    # networkx itself is installed too (without its optional dependencies) for its entry points: its
    # conftest checks that the test backend "nx_loopback" is registered; the source tree is imported.
    _run([str(venv / "bin" / "python"), "-m", "pip", "install", "-q", "--disable-pip-version-check",
          PYTEST_FOR_SUITE, str(tarballs[0])])
    shutil.rmtree(sdists)


def pytest_suite() -> RealSuite:
    """networkx's tree and drawing tests (PyPI sdist), with a virtualenv that has only pytest."""
    built = _build("networkx-3.6.1-v2", _make_networkx)
    python = built / "venv" / "bin" / "python"
    return RealSuite(name="networkx", runner="pytest", root=built / "src",
                     command=f"{python} -m pytest -p no:cacheprovider", tests=NETWORKX_TESTS, python=python)


# ------------------------------------------------------------------------------------------ playwright

_PLAYWRIGHT_CONFIG = """\
// Adapted from create-playwright's playwright.config.ts for an offline run: Debian's Chromium as
// executablePath, and the TodoMVC app served on 127.0.0.1 by webServer (a port of its own per run).
import { defineConfig, devices } from '@playwright/test';

const port = Number(process.env.TODOMVC_PORT ||= String(20000 + Math.floor(Math.random() * 20000)));

export default defineConfig({
  testDir: './tests',
  fullyParallel: true,
  forbidOnly: true,
  retries: 0,
  workers: 1,
  reporter: [['line'], ['junit', { outputFile: process.env.PLAYWRIGHT_JUNIT_OUTPUT_FILE || 'results/junit.xml' }]],
  use: { baseURL: `http://127.0.0.1:${port}`, trace: 'off' },
  projects: [
    { name: 'chromium', use: { ...devices['Desktop Chrome'], launchOptions: { executablePath: '%(chromium)s' } } },
  ],
  webServer: {
    command: `python3 -m http.server ${port} --bind 127.0.0.1 --directory app`,
    url: `http://127.0.0.1:${port}/todomvc/`,
    reuseExistingServer: false,
    stdout: 'ignore',
    stderr: 'ignore',
    timeout: 30000,
  },
});
"""

# demo.playwright.dev serves this React TodoMVC with test ids and labels the npm copy predates.
_APP_PATCHES: dict[str, list[tuple[str, str]]] = {
    "js/todoItem.jsx": [
        ("<li className=", '<li data-testid="todo-item" className='),
        ("<label onDoubleClick", '<label data-testid="todo-title" onDoubleClick'),
        ('className="edit"', 'className="edit"\n\t\t\t\t\t\taria-label="Edit"'),
    ],
    "js/footer.jsx": [('<span id="todo-count">', '<span id="todo-count" data-testid="todo-count">')],
    "js/app.jsx": [
        ('<ul id="todo-list">', '<ul id="todo-list" className="todo-list">'),
        ('id="toggle-all"', 'id="toggle-all"\n\t\t\t\t\t\t\taria-label="Mark all as complete"'),
    ],
}


def _make_playwright(tmp: Path) -> None:
    if not Path(CHROMIUM).exists():
        raise SuiteUnavailable(f"{CHROMIUM} is missing (Debian package chromium)")
    if shutil.which("npm") is None:
        raise SuiteUnavailable("npm is not installed")
    deps = tmp / "deps"
    deps.mkdir()
    (deps / "package.json").write_text('{"name": "fleetshard-realsuite-playwright", "private": true}\n')
    env = {**os.environ, "PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD": "1", "npm_config_update_notifier": "false"}
    _run(["npm", "install", "--no-audit", "--no-fund", "--loglevel=error", PLAYWRIGHT_TEST, CREATE_PLAYWRIGHT,
          TODOMVC], cwd=deps, env=env)
    modules = deps / "node_modules"
    project = tmp / "project"
    (project / "tests").mkdir(parents=True)
    spec = (modules / "create-playwright" / "assets" / "demo-todo-app.spec.ts").read_text()
    if "https://demo.playwright.dev/todomvc" not in spec:
        raise SuiteUnavailable(f"{CREATE_PLAYWRIGHT} has no demo TodoMVC spec")
    (project / "tests" / "demo-todo-app.spec.ts").write_text(
        spec.replace("https://demo.playwright.dev/todomvc", "/todomvc/"))
    app = project / "app" / "todomvc"
    shutil.copytree(modules / "todomvc" / "examples" / "react", app)
    for rel, patches in _APP_PATCHES.items():
        text = (app / rel).read_text()
        for old, new in patches:
            if old not in text:
                raise SuiteUnavailable(f"{TODOMVC}: {rel} has no {old!r} to adapt")
            text = text.replace(old, new, 1)
        (app / rel).write_text(text)
    (project / "playwright.config.ts").write_text(_PLAYWRIGHT_CONFIG % {"chromium": CHROMIUM})
    (project / "package.json").write_text('{"name": "todomvc-e2e", "private": true}\n')
    (project / "node_modules").symlink_to(_final_path("playwright") / "deps" / "node_modules")


def _final_path(name: str) -> Path:
    return cache_dir() / name


def playwright_suite() -> RealSuite:
    """create-playwright's demo TodoMVC spec, with @playwright/test and Debian's Chromium."""
    built = _build("playwright", _make_playwright)
    modules = built / "deps" / "node_modules"
    return RealSuite(name="todomvc", runner="playwright", root=built / "project",
                     command=f"{modules / '.bin' / 'playwright'} test", tests=("tests/demo-todo-app.spec.ts",),
                     setup=f"ln -sfn {modules} node_modules")


# -------------------------------------------------------------------------------------------- helpers


def copy_suite(suite: RealSuite, dest: Path) -> RealSuite:
    """A private, writable copy of ``suite`` in ``dest`` (to add a broken or a flaky test to)."""
    shutil.copytree(suite.root, dest, symlinks=True, ignore=shutil.ignore_patterns("__pycache__", "results",
                                                                                     "test-results"))
    for dirpath, dirnames, filenames in os.walk(dest):
        for name in [*dirnames, *filenames]:
            p = os.path.join(dirpath, name)
            if not os.path.islink(p):
                os.chmod(p, 0o777 if os.path.isdir(p) else 0o666)
    dest.chmod(0o777)
    return suite.with_root(dest)


def require(prepare: Callable[[], RealSuite]) -> RealSuite:
    """``prepare()``, or skip the calling test with the reason (fail it on CI, where .ci/run prepared it)."""
    import pytest

    try:
        return prepare()
    except SuiteUnavailable as exc:
        if os.environ.get("CI"):
            pytest.fail(f"real suite unavailable on CI: {exc}", pytrace=False)
        pytest.skip(f"real suite unavailable: {exc}")




def main() -> int:
    failed = 0
    for prepare in (pytest_suite, playwright_suite):
        try:
            suite = prepare()
        except SuiteUnavailable as exc:
            print(f"{prepare.__name__}: unavailable: {exc}", file=sys.stderr)
            failed += 1
        else:
            print(f"{suite.name}: ready in {suite.root}")
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
