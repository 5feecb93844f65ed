"""HF -> GGUF conversion for the llamacpp engine, with llama.cpp's own converter.

The converter (convert_hf_to_gguf.py + its conversion/ package + gguf-py) ships in the
llama-cpp-python sdist under vendor/llama.cpp, not in any wheel: `llama_cpp_sources` extracts those
files once (from a given sdist or llama.cpp checkout, or by `pip download` of the sdist matching the
installed llama-cpp-python) into a cache. Types the converter writes itself (f32, f16, bf16, q8_0)
come straight from it; others (q4_0, q4_k_m, q2_k) are quantised from f16 with llama.cpp's
llama_model_quantize. The output file appears complete or not at all.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

DEFAULT_LLAMA_CPP_PYTHON = "0.3.36"
CONVERTER_FILES = ("convert_hf_to_gguf.py", "conversion", "gguf-py")
CONVERTER_TYPES = ("f32", "f16", "bf16", "q8_0")
QUANTIZED_TYPES = {"q4_0": "LLAMA_FTYPE_MOSTLY_Q4_0", "q4_k_m": "LLAMA_FTYPE_MOSTLY_Q4_K_M",
                   "q2_k": "LLAMA_FTYPE_MOSTLY_Q2_K"}
GGUF_TYPES = CONVERTER_TYPES + tuple(QUANTIZED_TYPES)

# Runs llama.cpp's converter with its own gguf-py, optionally forcing the pre-tokenizer name
# (a custom byte-level BPE tokenizer has no hash in the converter's table; "gpt-2" fits it).
_RUNNER = """
import runpy, sys
src, pre = sys.argv[1], sys.argv[2]
sys.path[:0] = [src, src + "/gguf-py"]
if pre:
    from conversion.base import TextModel
    TextModel.get_vocab_base_pre = lambda self, tokenizer: pre
sys.argv = [src + "/convert_hf_to_gguf.py", *sys.argv[3:]]
runpy.run_path(sys.argv[0], run_name="__main__")
"""


class ConversionError(RuntimeError):
    """The conversion failed; the message carries the converter's reason and the fix."""


def default_cache_dir() -> Path:
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "deepfleet"


def installed_llama_cpp_version() -> str:
    try:
        from importlib.metadata import version

        return version("llama-cpp-python")
    except Exception:  # not installed: the pinned version's converter still converts
        return DEFAULT_LLAMA_CPP_PYTHON


def llama_cpp_sources(cache_dir: Path | None = None, sdist: Path | None = None) -> Path:
    """A directory holding llama.cpp's converter; extracted once per llama-cpp-python version.

    `sdist` may be a llama-cpp-python .tar.gz or a llama.cpp checkout; otherwise pip downloads the
    sdist of the installed version (hosts without an index pass --llama-cpp-src).
    """
    if sdist is not None and Path(sdist).is_dir():
        if not (Path(sdist) / "convert_hf_to_gguf.py").is_file():
            raise ConversionError(f"{sdist} holds no convert_hf_to_gguf.py; pass a llama.cpp checkout")
        return Path(sdist)
    version = installed_llama_cpp_version()
    target = (cache_dir or default_cache_dir()) / f"llama.cpp-{version}"
    if (target / "convert_hf_to_gguf.py").is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent, prefix=".llama.cpp-") as scratch:
        archive = Path(sdist) if sdist else _download_sdist(version, Path(scratch))
        staging = Path(scratch) / "src"
        _extract_converter(archive, staging)
        try:
            os.rename(staging, target)
        except OSError:  # another conversion extracted it first
            if not (target / "convert_hf_to_gguf.py").is_file():
                raise
    return target


def _download_sdist(version: str, scratch: Path) -> Path:
    result = subprocess.run([sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--no-binary",
                             ":all:", "--dest", str(scratch), f"llama-cpp-python=={version}"],
                            capture_output=True, text=True)
    archives = list(scratch.glob("llama_cpp_python-*.tar.gz"))
    if result.returncode != 0 or not archives:
        raise ConversionError(f"could not download the llama-cpp-python {version} sdist (it carries "
                              f"llama.cpp's converter): {result.stderr.strip()[-400:]}; pass --llama-cpp-src")
    return archives[0]


def _extract_converter(archive: Path, staging: Path) -> None:
    with tarfile.open(archive) as tar:
        members = []
        for member in tar.getmembers():
            parts = member.name.split("/")
            if len(parts) > 3 and parts[1:3] == ["vendor", "llama.cpp"] and parts[3] in CONVERTER_FILES:
                member.name = "/".join(parts[3:])
                members.append(member)
        if not members:
            raise ConversionError(f"{archive} has no vendor/llama.cpp/convert_hf_to_gguf.py; "
                                  "pass a llama-cpp-python sdist")
        tar.extractall(staging, members=members, filter="data")


def convert(model_dir: Path, out: Path, gguf_type: str = "q8_0", pre_tokenizer: str = "",
            sources: Path | None = None) -> Path:
    """Convert a transformers directory to a GGUF file of `gguf_type`; returns `out`."""
    model_dir, out = Path(model_dir), Path(out)
    if gguf_type not in GGUF_TYPES:
        raise ConversionError(f"unknown GGUF type {gguf_type!r}; use one of {', '.join(GGUF_TYPES)}")
    if not (model_dir / "config.json").is_file():
        raise ConversionError(f"{model_dir} holds no config.json; pass a transformers model directory")
    if out.exists():
        raise ConversionError(f"{out} already exists; remove it or choose another --out")
    sources = sources or llama_cpp_sources()
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=out.parent, prefix=f".{out.name}.") as scratch:
        direct = gguf_type in CONVERTER_TYPES
        converted = Path(scratch) / ("out.gguf" if direct else "f16.gguf")
        _run_converter(sources, model_dir, converted, gguf_type if direct else "f16", pre_tokenizer)
        if not direct:
            quantized = Path(scratch) / "out.gguf"
            quantize_gguf(converted, quantized, gguf_type)
            converted = quantized
        with open(converted, "rb") as handle:
            os.fsync(handle.fileno())
        os.rename(converted, out)
    return out


def _run_converter(sources: Path, model_dir: Path, out: Path, outtype: str, pre_tokenizer: str) -> None:
    result = subprocess.run([sys.executable, "-c", _RUNNER, str(sources), pre_tokenizer, str(model_dir),
                             "--outfile", str(out), "--outtype", outtype],
                            capture_output=True, text=True)
    if result.returncode != 0 or not out.is_file():
        tail = "\n".join(result.stderr.strip().splitlines()[-8:])
        hint = (" (the tokenizer is not in llama.cpp's table: for a byte-level BPE tokenizer pass "
                "--pre-tokenizer gpt-2)" if "pre-tokenizer was not recognized" in result.stderr else "")
        raise ConversionError(f"convert_hf_to_gguf.py failed{hint}:\n{tail}")


def quantize_gguf(source: Path, out: Path, gguf_type: str) -> None:
    """Quantise a GGUF file with llama.cpp's llama_model_quantize (needs llama-cpp-python)."""
    import ctypes

    try:
        import llama_cpp
    except ImportError as exc:
        raise ConversionError(f"GGUF type {gguf_type} needs llama-cpp-python ({exc}); install "
                              "deepfleet-runtime[llamacpp] or convert to q8_0") from None
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = getattr(llama_cpp, QUANTIZED_TYPES[gguf_type])
    if llama_cpp.llama_model_quantize(str(source).encode(), str(out).encode(), ctypes.byref(params)) != 0:
        raise ConversionError(f"llama.cpp could not quantise {source} to {gguf_type}")
