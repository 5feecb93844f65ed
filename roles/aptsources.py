"""A host's apt sources as a fact, and the decisions that keep `apt-get update` working.

apt refuses to update at all when two entries name the same URI and suite with different
`Signed-By` values ("Conflicting values set for option Signed-By"), which is what happens when a
role writes its own file for a repository the host already lists: Debian's stock sources (the
one-line /etc/apt/sources.list of the installer, or the deb822 /etc/apt/sources.list.d/debian.sources
of newer installs and images), the cuda-keyring package's cuda-*.list, NVIDIA's
nvidia-container-toolkit.list, Docker's docker.list/docker.sources. So roles read what is there
(`AptSources`: every sources file, verbatim) and decide (`source_plan`): an entry for the same
URI and suite in another file is reused, with the components the role needs added to it in
place; only where none exists does the role write its own file.

    AptSources   {path: content} of /etc/apt/sources.list, sources.list.d/*.list and *.sources
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from pyinfra.api import FactBase

SOURCES_FILES = ("/etc/apt/sources.list", "/etc/apt/sources.list.d/*.list", "/etc/apt/sources.list.d/*.sources")
_MARK = "==> deepfleet apt source: "


class AptSources(FactBase):
    """Every apt sources file of the host, verbatim: {path: content}; {} on hosts without apt."""

    def command(self) -> str:
        return (f"for f in {' '.join(SOURCES_FILES)}; do [ -f \"$f\" ] && "
                f"{{ echo '{_MARK}'\"$f\"; cat \"$f\"; echo; }}; done; true")

    @staticmethod
    def default() -> dict:
        return {}

    def process(self, output):
        files: dict[str, list[str]] = {}
        current = None
        for line in output:
            if line.startswith(_MARK):
                current = line[len(_MARK):]
                files[current] = []
            elif current is not None:
                files[current].append(line)
        return {path: "\n".join(lines).rstrip("\n") + "\n" for path, lines in files.items()}


@dataclass(frozen=True)
class AptEntry:
    """One enabled `deb` entry: a URI and the suites and components it names."""

    path: str
    uri: str
    suites: tuple[str, ...]
    components: tuple[str, ...]
    signed_by: str | None = None


def normal_uri(uri: str) -> str:
    """A URI as apt compares them (a trailing slash does not make another source)."""
    return uri.rstrip("/")


def _one_line_entries(path: str, text: str) -> list[AptEntry]:
    entries = []
    for line in text.splitlines():
        line = line.split("#", 1)[0].strip()
        options = {}
        if line.startswith("deb ") or line.startswith("deb\t"):
            rest = line[3:].strip()
            if rest.startswith("["):
                block, _, rest = rest[1:].partition("]")
                options = dict(item.split("=", 1) for item in block.split() if "=" in item)
            words = rest.split()
            if len(words) >= 2:
                entries.append(AptEntry(path, words[0], (words[1],), tuple(words[2:]),
                                        options.get("signed-by")))
    return entries


def _stanzas(text: str) -> list[list[str]]:
    """deb822 paragraphs (lists of lines, comments kept), separated by blank lines."""
    stanzas, current = [], []
    for line in text.splitlines():
        if line.strip():
            current.append(line)
        elif current:
            stanzas.append(current)
            current = []
    if current:
        stanzas.append(current)
    return stanzas


def _fields(stanza: list[str]) -> dict[str, str]:
    fields, key = {}, None
    for line in stanza:
        if line.startswith("#"):
            continue
        if line[:1] in (" ", "\t") and key:
            fields[key] += " " + line.strip()
            continue
        name, _, value = line.partition(":")
        key = name.strip().lower()
        fields[key] = value.strip()
    return fields


def _deb822_entries(path: str, text: str) -> list[AptEntry]:
    entries = []
    for stanza in _stanzas(text):
        fields = _fields(stanza)
        if "deb" not in fields.get("types", "").split() or fields.get("enabled", "yes").lower() == "no":
            continue
        for uri in fields.get("uris", "").split():
            entries.append(AptEntry(path, uri, tuple(fields.get("suites", "").split()),
                                    tuple(fields.get("components", "").split()), fields.get("signed-by")))
    return entries


def apt_entries(sources: dict[str, str]) -> list[AptEntry]:
    """Every enabled `deb` entry of the host's sources files."""
    entries = []
    for path, text in sorted(sources.items()):
        parse = _deb822_entries if path.endswith(".sources") else _one_line_entries
        entries += parse(path, text)
    return entries


def with_components(path: str, text: str, uri: str, suite: str, components: tuple[str, ...]) -> str:
    """`text` (the file at `path`) with `components` added to its entries for `uri` and `suite`."""
    if path.endswith(".sources"):
        out = []
        for stanza in _stanzas(text):
            fields = _fields(stanza)
            if (normal_uri(uri) in {normal_uri(u) for u in fields.get("uris", "").split()}
                    and suite in fields.get("suites", "").split()):
                present = fields.get("components", "").split()
                wanted = " ".join(present + [c for c in components if c not in present])
                if "components" in fields:
                    stanza = [f"Components: {wanted}" if re.match(r"(?i)components\s*:", line) else line
                              for line in stanza]
                else:
                    stanza = [*stanza, f"Components: {wanted}"]
            out.append("\n".join(stanza))
        return "\n\n".join(out) + "\n"
    lines = []
    for line in text.splitlines():
        entry = _one_line_entries(path, line)
        if entry and normal_uri(entry[0].uri) == normal_uri(uri) and entry[0].suites == (suite,):
            body, hash_, comment = line.partition("#")
            missing = [c for c in components if c not in entry[0].components]
            line = body.rstrip() + "".join(f" {c}" for c in missing) + (f" {hash_}{comment}" if hash_ else "")
        lines.append(line)
    return "\n".join(lines) + "\n"


@dataclass
class SourcePlan:
    """What to do for one repository: reuse an entry of another file (adding components to it),
    or write our own file."""

    reuse: AptEntry | None = None  # the host's own entry for the same URI and suite
    rewritten: dict[str, str] = field(default_factory=dict)  # {path: new content} of files we extend


def source_plan(sources: dict[str, str], own_path: str, uri: str, suite: str,
                components: tuple[str, ...]) -> SourcePlan:
    """How to make `uri suite components` available without a second, conflicting entry."""
    matches = [entry for entry in apt_entries(sources) if entry.path != own_path
               and normal_uri(entry.uri) == normal_uri(uri) and suite in entry.suites]
    if not matches:
        return SourcePlan()
    reused = matches[0]
    present = {c for entry in matches for c in entry.components}
    if all(c in present for c in components):
        return SourcePlan(reused)
    return SourcePlan(reused, {reused.path: with_components(reused.path, sources[reused.path], uri, suite,
                                                            components)})
