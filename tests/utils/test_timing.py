"""gpt_jax.utils.timing: interleaved timing whose order rotates, and its summaries."""
from gpt_jax.utils.timing import Timing, time_calls


def test_time_calls_rotates_the_order_and_times_each_once_per_repeat():
    """Repeat r starts at the r-th callable, so that none always runs first or after the same
    one (a call can be slower for what ran just before it); warm-up calls come first."""
    calls = []
    fns = {name: (lambda name=name: calls.append(name)) for name in "abc"}
    out = time_calls(fns, repeats=4, warmup=1)
    assert calls[:3] == list("abc")                                  # the warm-up
    assert calls[3:] == list("abc" "bca" "cab" "abc")
    assert all(len(t.times) == 4 and min(t.times) >= 0 for t in out.values())


def test_timing_summaries():
    t = Timing([3.0, 1.0, 2.0])
    assert (t.median, t.min, t.max) == (2.0, 1.0, 3.0)
    assert t.spread == 1.0
    assert Timing([0.0]).spread == 0.0


def test_page_faults_counts_the_pages_a_call_touches_anew():
    """A call that maps and writes 64 MiB of fresh memory faults in its pages: 16384 of 4 KiB,
    or about 32 where the kernel backs it with 2 MiB huge pages; a call that allocates nothing,
    about none."""
    import mmap
    import pytest
    from gpt_jax.utils.timing import page_faults, resource
    if resource is None:
        pytest.skip("no page-fault counts on this platform")

    def touch():
        m = mmap.mmap(-1, 64 << 20)
        for i in range(0, len(m), 4096):
            m[i] = 1
        m.close()

    assert page_faults(touch) >= 24 > page_faults(lambda: None)
