"""``srrbench perf``'s search rows: each fast search returns what its textbook reference returns."""
from benchmark.perf import perf_searches


def test_search_rows_agree_with_their_references():
    rows = perf_searches(quick=True)
    assert [r["task"].split(" (")[0] for r in rows] == [
        "pac-bayes sigma search", "sharpness alpha search, plain box", "sharpness alpha search, magnitude-aware box"]
    assert all(r["agree"] for r in rows), [r["detail"] for r in rows]
    assert all(r["reference_s"] > 0 and r["fast_s"] > 0 for r in rows)
