"""Random values come from os.urandom a block at a time, and none is handed out twice."""

from __future__ import annotations

import os
import uuid

from operator_server import entropy


def test_values_across_many_blocks_have_their_size_and_never_repeat() -> None:
    seen = set()
    for _ in range(3 * entropy.BLOCK // 10 + 7):  # crosses block boundaries unevenly
        value = entropy.token_bytes(10)
        assert len(value) == 10
        seen.add(value)
    assert len(seen) == 3 * entropy.BLOCK // 10 + 7
    assert len(entropy.token_hex(16)) == 32
    assert len(entropy.token_bytes(entropy.BLOCK + 1)) == entropy.BLOCK + 1


def test_uuid4_text_is_a_version_4_uuid_as_the_standard_library_writes_it() -> None:
    texts = [entropy.uuid4_text() for _ in range(2000)]
    for text in texts:
        parsed = uuid.UUID(text)
        assert (parsed.version, parsed.variant) == (4, uuid.RFC_4122)
        assert str(parsed) == text
    assert len(set(texts)) == len(texts)


def test_a_forked_child_does_not_repeat_its_parents_values() -> None:
    entropy.token_bytes(1)  # the parent holds a block with values left in it
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: report its next value and leave
        os.write(write, entropy.token_bytes(16))
        os._exit(0)
    os.close(write)
    child = os.read(read, 16)
    os.close(read)
    os.waitpid(pid, 0)
    assert child != entropy.token_bytes(16)
