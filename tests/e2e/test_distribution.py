"""The project as users install it: a wheel built from the repo, run from anywhere.

An editable install reads templates, Lua and the catalogue straight from the clone, so it hides
any file the wheel forgot. These tests build the wheel (and the sdist) from the repo, install
the wheel into a fresh venv outside the repo, and with `pipx` as the README's production way
does, then run that install's `provision` in an empty folder: `/healthz`, a browser login, the
bundled catalogue, and `hello-web` installed end to end through the API by the real agent.
`make up` from the clone is tried too. The installs reuse pip's download cache, so only the
first run on a machine downloads the dependencies.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import subprocess
import sys
import tarfile
import zipfile
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import pytest

from tests.agent_support import wait_until
from tests.auth_support import bearer, fetch_login_form
from tests.e2e.test_up import _assert_nothing_left as assert_nothing_left
from tests.e2e.test_up import api, free_port

pytestmark = [pytest.mark.redis, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[2]
ADMIN_PASSWORD = "a long and proper admin password"
INSTALL_TIMEOUT_S = 600
# What the program reads at run time besides its modules: each must be in the wheel and sdist.
RUNTIME_DATA = ("panel/templates", "panel/static", "installers")


def runtime_files() -> set[str]:
    """Repo-relative paths of every file the program reads at run time (Lua included)."""
    found = {str(path.relative_to(REPO)) for path in REPO.glob("*/**/*.lua")}
    for folder in RUNTIME_DATA:
        found |= {
            str(path.relative_to(REPO))
            for path in (REPO / folder).rglob("*")
            if path.is_file() and "__pycache__" not in path.parts
        }
    return {name for name in found if not name.startswith(("tests/", ".venv/", "build/"))}


def run(argv: list[str], **kwargs: object) -> subprocess.CompletedProcess[str]:
    """Run a command to completion; its output is in the assertion message if it fails."""
    result = subprocess.run(argv, capture_output=True, text=True, check=False, **kwargs)  # type: ignore[call-overload]
    assert result.returncode == 0, f"{argv} failed:\n{result.stdout}\n{result.stderr}"
    return result


def clean_env(home: Path, **more: str) -> dict[str, str]:
    """An environment as a new user has it: no PROV_* of the test run, no PYTHONPATH."""
    env = {
        name: value
        for name, value in os.environ.items()
        if not name.startswith(("PROV_", "PYTHON", "VIRTUAL_ENV", "PIP_REQUIRE"))
    }
    return {**env, "HOME": str(home), **more}


@pytest.fixture(scope="module")
def dist(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The wheel and sdist built from the repo, as a release would build them."""
    out = tmp_path_factory.mktemp("dist")
    # A copy of the files git would commit, so nothing local (a .venv, build/) leaks in.
    source = tmp_path_factory.mktemp("source") / "provision"
    listing = ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"]
    files = run(listing, cwd=REPO).stdout.split("\0")
    for name in filter(None, files):
        if (REPO / name).is_file():
            (source / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / name, source / name)
    run([sys.executable, "-m", "build", "--sdist", "--wheel", "--outdir", str(out), str(source)])
    return out


def the_wheel(dist: Path) -> Path:
    (wheel,) = dist.glob("*.whl")
    return wheel


@pytest.mark.timeout(INSTALL_TIMEOUT_S)
def test_the_wheel_and_the_sdist_carry_every_file_read_at_run_time(dist):
    wanted = runtime_files()
    assert "installers/hello-web/install.sh" in wanted
    assert "installers/_lib/common.sh" in wanted
    assert "statemachine/lua/transition.lua" in wanted
    with zipfile.ZipFile(the_wheel(dist)) as wheel:
        in_wheel = set(wheel.namelist())
        modes = {info.filename: info.external_attr >> 16 for info in wheel.infolist()}
    assert wanted <= in_wheel, sorted(wanted - in_wheel)
    assert modes["installers/hello-web/install.sh"] & 0o111, "install.sh lost its x bit"
    assert not any(name.startswith("tests/") for name in in_wheel)
    (sdist,) = dist.glob("*.tar.gz")
    with tarfile.open(sdist) as archive:
        in_sdist = {name.split("/", 1)[1] for name in archive.getnames() if "/" in name}
    assert wanted <= in_sdist, sorted(wanted - in_sdist)


class Installed:
    """`provision up` of an installed `provision`, run in an empty folder."""

    def __init__(self, provision: Path, folder: Path, port: int) -> None:
        self.provision = provision
        self.folder = folder
        self.url = f"http://127.0.0.1:{port}"
        self.env = clean_env(
            folder,
            PROV_PANEL_PORT=str(port),
            PROV_ADMIN_PASSWORD=ADMIN_PASSWORD,
            PROV_LEASE_S="3",
            PROV_SHUTDOWN_GRACE_S="5",
        )
        self.log = folder.parent / f"{folder.name}.log"
        self.process: subprocess.Popen[bytes] | None = None

    def start(self, argv: list[str] | None = None, cwd: Path | None = None) -> None:
        with self.log.open("ab") as log:
            self.process = subprocess.Popen(
                argv or [str(self.provision), "up"],
                cwd=cwd or self.folder,
                env=self.env,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,  # so Ctrl-C can be sent to the whole group, as a tty does
            )

    def stop(self) -> int:
        assert self.process is not None
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGINT)
        return self.process.wait(timeout=90)

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    async def ready(self) -> None:
        async def answers() -> bool:
            assert self.process is not None
            if self.process.poll() is not None:
                raise AssertionError(f"provision up exited early:\n{self.output()}")
            try:
                async with (
                    aiohttp.ClientSession() as session,
                    session.get(f"{self.url}/readyz") as response,
                ):
                    return response.status == 200
            except aiohttp.ClientError:
                return False

        await wait_until(answers, timeout_s=90, message="provision up is ready")

    def token(self, data_dir: Path | None = None) -> dict[str, str]:
        folder = data_dir or self.folder / ".provision"
        return bearer((folder / "admin.token").read_text().strip())


def fresh_venv_install(wheel: Path, root: Path) -> Path:
    """A new venv outside the repo with the wheel installed; its `provision`."""
    venv = root / "venv"
    run([sys.executable, "-m", "venv", str(venv)])
    run([str(venv / "bin" / "python"), "-m", "pip", "install", "--quiet", str(wheel)], cwd=root)
    return venv / "bin" / "provision"


@pytest.fixture
def empty_folder(tmp_path: Path) -> Path:
    folder = tmp_path / "empty"
    folder.mkdir()
    return folder


async def login_in_a_browser_way(session: aiohttp.ClientSession, url: str) -> int:
    """Log in as admin through the form (its CSRF token included); the status of the POST."""
    form = await fetch_login_form(session, f"{url}/login")
    async with session.post(
        f"{url}/login",
        data=form.fields("admin", ADMIN_PASSWORD),
        headers={**form.headers(), "Origin": url},
        allow_redirects=False,
    ) as response:
        return response.status


async def install_hello_web(session: aiohttp.ClientSession, url: str, port: int) -> dict:
    """Submit hello-web through the API and wait for its end; the job."""
    status, body = await api(
        session,
        "POST",
        f"{url}/api/install",
        json={"app_id": "hello-web", "inputs": {"port": port, "site_title": "From the wheel"}},
    )
    assert status == 201, body

    async def ended() -> dict | None:
        _, job = await api(session, "GET", f"{url}/api/jobs/{body['job_id']}")
        return job if job["state"] in {"succeeded", "failed"} else None

    return await wait_until(ended, timeout_s=240, message="hello-web ends")


@pytest.fixture
def hello_port() -> Iterator[int]:
    """A port for hello-web; its server is stopped and its files removed afterwards."""
    port = free_port()
    yield port
    subprocess.run(
        ["bash", str(REPO / "installers" / "hello-web" / "uninstall.sh")],
        env={"PATH": os.environ["PATH"], "PORT": str(port)},
        capture_output=True,
        check=False,
    )


async def check_installed_panel(up: Installed, hello_port: int) -> None:
    """Health, login, the bundled catalogue, and hello-web installed end to end."""
    async with aiohttp.ClientSession() as session:
        async with session.get(f"{up.url}/healthz") as response:
            assert response.status == 200
        assert await login_in_a_browser_way(session, up.url) == 303
    async with aiohttp.ClientSession(headers=up.token()) as session:
        status, apps = await api(session, "GET", f"{up.url}/api/apps")
        assert status == 200
        listed = {app["id"]: app for app in apps["apps"]}
        assert {"hello-web", "nginx", "postgresql", "redis"} <= set(listed)
        assert listed["hello-web"]["valid"], listed["hello-web"]
        job = await install_hello_web(session, up.url, hello_port)
        assert (job["state"], job["exit_code"]) == ("succeeded", 0), (job, up.output())
        async with session.get(f"http://127.0.0.1:{hello_port}/") as page:
            assert "From the wheel" in await page.text()


@pytest.mark.timeout(INSTALL_TIMEOUT_S)
async def test_a_wheel_installed_in_a_fresh_venv_runs_provision_up_anywhere(
    dist, tmp_path, empty_folder, hello_port
):
    provision = await asyncio.to_thread(fresh_venv_install, the_wheel(dist), tmp_path)
    env = clean_env(empty_folder)
    where = run(
        [str(provision.parent / "python"), "-c", "import panel, installers; print(panel.__file__)"],
        cwd=empty_folder,
        env=env,
    ).stdout
    assert str(tmp_path / "venv") in where and str(REPO) not in where
    listed = run([str(provision), "apps", "list", "--json"], cwd=empty_folder, env=env).stdout
    assert '"hello-web"' in listed
    run([str(provision), "apps", "check"], cwd=empty_folder, env=env)

    up = Installed(provision, empty_folder, free_port())
    up.start()
    try:
        await up.ready()
        await wait_until(
            lambda: "installers:" in up.output(), message="provision up names its catalogue"
        )
        assert "site-packages/installers" in up.output()  # the bundled catalogue
        await check_installed_panel(up, hello_port)
    finally:
        code = await asyncio.to_thread(up.stop)
    assert code == 0, up.output()


@pytest.mark.timeout(INSTALL_TIMEOUT_S)
async def test_pipx_install_of_the_wheel_runs_provision_up(
    dist, tmp_path, empty_folder, hello_port
):
    pipx_home, bin_dir = tmp_path / "pipx", tmp_path / "bin"
    env = clean_env(tmp_path, PIPX_HOME=str(pipx_home), PIPX_BIN_DIR=str(bin_dir))
    await asyncio.to_thread(
        run, [sys.executable, "-m", "pipx", "install", str(the_wheel(dist))], env=env
    )
    provision = bin_dir / "provision"
    assert provision.exists()
    up = Installed(provision, empty_folder, free_port())
    up.start()
    try:
        await up.ready()
        await check_installed_panel(up, hello_port)
    finally:
        code = await asyncio.to_thread(up.stop)
    assert code == 0, up.output()


@pytest.mark.timeout(INSTALL_TIMEOUT_S)
async def test_make_up_from_the_clone_starts_everything(tmp_path):
    make = shutil.which("make")
    assert make is not None, "make is needed for `make up` (CI installs it)"
    data_dir = tmp_path / "data"
    up = Installed(REPO / ".venv" / "bin" / "provision", tmp_path, free_port())
    up.env["PROV_DATA_DIR"] = str(data_dir)
    up.start([make, "up"], cwd=REPO)
    try:
        await up.ready()
        async with aiohttp.ClientSession(headers=up.token(data_dir)) as session:
            status, apps = await api(session, "GET", f"{up.url}/api/apps")
            assert status == 200
            assert "hello-web" in {app["id"] for app in apps["apps"]}
    finally:
        await asyncio.to_thread(up.stop)  # make's own status after Ctrl-C is make's business
    # Ctrl-C stopped what `make up` started: nothing of its data folder runs any more.
    await asyncio.to_thread(assert_nothing_left, data_dir)
    assert "stopped Redis" in up.output(), up.output()
