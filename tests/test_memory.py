"""infosft.memory: freed heap pages go back to the OS."""

import sys

import pytest

from infosft.memory import release_freed_memory, rss_mb


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc malloc_trim")
def test_trim_returns_freed_small_blocks_to_the_os():
    # many small blocks (below mmap's threshold) stay in malloc's arena after free
    blocks = [bytearray(64 * 1024) for _ in range(4000)]  # ~256 MB
    keep = blocks[-1]  # pins the arena's top, so only a trim can release the rest
    before = rss_mb()
    del blocks
    assert release_freed_memory() is True
    after = rss_mb()
    assert keep and before - after > 150, (before, after)
