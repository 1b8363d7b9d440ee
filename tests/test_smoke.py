import pytest

import shmwal


@pytest.mark.timeout(60)
def test_append_then_read_round_trip(client):
    assert client.append("t", b"hello") == 0
    assert client.batch_append("t", [b"a", b"bb"]) == range(1, 3)
    assert client.read_next("t") == shmwal.Entry("t", 0, b"hello")
    assert [e.data for e in client.batch_read("t", 100)] == [b"a", b"bb"]
    assert client.read_next("t") is None
