"""The CUDA targets both builds compile for: setup.py's DEFAULT_CUDA_ARCH_LIST is the one list,
CMakeLists.txt derives CMAKE_CUDA_ARCHITECTURES from it, CI builds it, and the newest entry
carries PTX so a GPU newer than the list still runs (no "no kernel image is available").
Only the files are read: nothing here builds or needs nvcc."""

from __future__ import annotations

import ast
import re
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
CMAKE_BLOCK = ("# >>> darex default cuda architectures", "# <<< darex default cuda architectures")
ENTRY = re.compile(r"(\d+)\.(\d+)(\+PTX)?")


def _default_arch_list() -> str:
    tree = ast.parse((ROOT / "setup.py").read_text(encoding="utf-8"))
    for node in tree.body:
        if (isinstance(node, ast.Assign) and len(node.targets) == 1
                and getattr(node.targets[0], "id", None) == "DEFAULT_CUDA_ARCH_LIST"):
            assert isinstance(node.value, ast.Constant) and isinstance(node.value.value, str), \
                "DEFAULT_CUDA_ARCH_LIST must stay one string literal: CMakeLists.txt parses it"
            return node.value.value
    raise AssertionError("setup.py has no top-level DEFAULT_CUDA_ARCH_LIST")


def _entries() -> list[re.Match]:
    entries = [ENTRY.fullmatch(e) for e in _default_arch_list().split(";")]
    assert all(entries), _default_arch_list()
    return entries


def _as_cmake(entries: list[re.Match]) -> list[str]:
    """TORCH_CUDA_ARCH_LIST "8.0" -> CMake "80-real" (SASS only); "12.0+PTX" -> "120" (SASS + PTX)."""
    return [m[1] + m[2] + ("" if m[3] else "-real") for m in entries]


def test_default_list_is_ascending_with_ptx_only_for_the_newest():
    entries = _entries()
    versions = [(int(m[1]), int(m[2])) for m in entries]
    assert versions == sorted(set(versions)), _default_arch_list()
    assert entries[-1][3], f"the newest arch must embed PTX: {_default_arch_list()}"
    assert not any(m[3] for m in entries[:-1]), "PTX for the newest arch covers the older ones"
    # The GPUs the README promises: T4, A100, H100/H200, B200, RTX 50.
    assert {(7, 5), (8, 0), (9, 0), (10, 0), (12, 0)} <= set(versions)


def test_setup_py_defaults_to_the_list():
    text = (ROOT / "setup.py").read_text(encoding="utf-8")
    assert 'os.environ.setdefault("TORCH_CUDA_ARCH_LIST", DEFAULT_CUDA_ARCH_LIST)' in text
    assert not re.search(r'setdefault\("TORCH_CUDA_ARCH_LIST", "', text), "a second literal list"


def test_torch_turns_the_list_into_sass_plus_ptx(monkeypatch):
    from torch.utils import cpp_extension

    arch_flags = getattr(cpp_extension, "_get_cuda_arch_flags", None)
    if arch_flags is None:
        pytest.skip("this torch has no cpp_extension._get_cuda_arch_flags")
    monkeypatch.setenv("TORCH_CUDA_ARCH_LIST", _default_arch_list())
    flags = set(arch_flags())
    expected = set()
    for m in _entries():
        num = m[1] + m[2]
        expected.add(f"-gencode=arch=compute_{num},code=sm_{num}")
        if m[3]:
            expected.add(f"-gencode=arch=compute_{num},code=compute_{num}")
    assert flags == expected


def test_cmake_takes_its_default_from_setup_py():
    text = (ROOT / "CMakeLists.txt").read_text(encoding="utf-8")
    assert "set(CMAKE_CUDA_ARCHITECTURES ${DAREX_DEFAULT_CUDA_ARCHITECTURES})" in text
    assert not re.search(r"set\(CMAKE_CUDA_ARCHITECTURES\s+\d", text), "a second literal list"
    assert text.count(CMAKE_BLOCK[0]) == 1 and text.count(CMAKE_BLOCK[1]) == 1


@pytest.mark.skipif(shutil.which("cmake") is None, reason="cmake not installed")
def test_cmake_list_equals_setup_py_list(tmp_path):
    text = (ROOT / "CMakeLists.txt").read_text(encoding="utf-8")
    block = text[text.index(CMAKE_BLOCK[0]):text.index(CMAKE_BLOCK[1])]
    script = tmp_path / "arches.cmake"
    script.write_text(block + '\nmessage("${DAREX_DEFAULT_CUDA_ARCHITECTURES}")\n', encoding="utf-8")
    # Script mode: CMAKE_CURRENT_SOURCE_DIR is the working directory, the repository root.
    done = subprocess.run(["cmake", "-P", str(script)], cwd=ROOT, capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stderr.strip().split(";") == _as_cmake(_entries())


def test_ci_builds_the_default_list():
    text = (ROOT / ".ci" / "run").read_text(encoding="utf-8")
    assert "env -u TORCH_CUDA_ARCH_LIST" in text
    assert not re.search(r"TORCH_CUDA_ARCH_LIST=", text), "CI must build what users get"


def test_readme_names_the_default_list():
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    assert f"`{_default_arch_list()}`" in readme
