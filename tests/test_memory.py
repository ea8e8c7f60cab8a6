"""infosft.memory: freed heap pages go back to the OS."""

import sys

import pytest

from infosft.memory import release_freed_memory


def _rss_mb() -> float:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmRSS")) / 1024


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc malloc_trim")
def test_trim_returns_freed_small_blocks_to_the_os():
    # many small blocks (below mmap's threshold) stay in malloc's arena after free
    blocks = [bytearray(64 * 1024) for _ in range(4000)]  # ~256 MB
    keep = blocks[-1]  # pins the arena's top, so only a trim can release the rest
    before = _rss_mb()
    del blocks
    assert release_freed_memory() is True
    after = _rss_mb()
    assert keep and before - after > 150, (before, after)
