"""docs/settings.md is generated from the settings' one declaration, and current."""

from __future__ import annotations

from deepfleet.paths import PROJECT_ROOT
from roles.defaults import DEFAULTS
from roles.settings_doc import reader, render


def test_docs_settings_md_is_what_the_declaration_generates():
    assert (PROJECT_ROOT / "docs" / "settings.md").read_text() == render(), (
        "docs/settings.md is stale: python -m roles.settings_doc > docs/settings.md")


def test_every_setting_has_a_row_with_its_type_default_and_reader():
    rows = {line.split(" | ")[0].strip("| `"): line for line in render().splitlines() if line.startswith("| `")}
    assert list(rows) == list(DEFAULTS)
    assert rows["runtime_quantization"].startswith(
        "| `runtime_quantization` | str | transformers: `'none'`, `'bf16'`, `'int8'`, `'int4'`<br>vllm: ")
    assert " | `'none'` |  | roles/runtime.py (runtime.yaml) | " in rows["runtime_quantization"]
    assert rows["verify_gpu_count"].startswith("| `verify_gpu_count` | int or null |  | `None` | `2` | deploys/verify.py |")
    assert reader("nvidia_container_toolkit_version") == "roles/nvidia_container_toolkit.py"
