"""Resuming a bundle push: only what the host lacks is sent (the transfer itself: roles/transfer.py)."""

from __future__ import annotations

from roles.bundle_push import StagedTree, still_to_send
from roles.transfer import PartialUpload

FILES = {"pool/a.deb": {"sha256": "a", "size": 100}, "pool/b.deb": {"sha256": "b", "size": 50},
         "Release": {"sha256": "r", "size": 10}, "empty": {"sha256": "e", "size": 0}}


def test_a_cut_short_file_continues_where_it_stopped_and_held_files_are_skipped():
    uploads = still_to_send("/bundle/apt", FILES, {"pool/a.deb": 40, "Release": 10, "empty": 0}, "/h/.apt.partial")
    assert uploads == [PartialUpload("/bundle/apt/pool/a.deb", "/h/.apt.partial/pool/a.deb", 100, 40),
                       PartialUpload("/bundle/apt/pool/b.deb", "/h/.apt.partial/pool/b.deb", 50, 0)]


def test_a_file_longer_than_it_should_be_is_sent_again_whole():
    assert still_to_send("/b", {"x": {"sha256": "x", "size": 5}}, {"x": 9}, "/s") == [PartialUpload("/b/x", "/s/x", 5, 0)]


def test_the_fact_reads_the_marker_and_the_staged_sizes():
    fact = StagedTree()
    assert fact.process(['{"Release": "r"}', "--- staged"]) == {"complete": {"Release": "r"}, "staged": {}}
    assert fact.process(["--- staged", "40 pool/a b.deb", "0 empty"]) == {
        "complete": None, "staged": {"pool/a b.deb": 40, "empty": 0}}
    assert "find /opt/x/.a.partial -type f -printf" in fact.command("/opt/x/a", "/opt/x/.a.partial")
