"""The study's small vocabulary: re-coding, decoding and the unigram baseline."""
import numpy as np
import pytest

from gpt_jax.lab.study.vocab import small_vocab, unigram_loss


class _Data:   # TokenData-shaped
    def __init__(self, train, val):
        self.splits = {"train": np.asarray(train), "val": np.asarray(val)}
        self.meta, self.dir = {"vocab_size": 50257}, "mem"


def test_keeps_most_frequent_ids_and_maps_the_rest_to_unk():
    d = _Data([7, 7, 7, 3, 3, 9, 50000], [7, 3, 9, 11])
    v = small_vocab(d, 3)                      # keeps 7, 3; UNK = 2
    assert v.ids.tolist() == [7, 3] and v.unk == 2 and v.size == 3
    assert v.splits["train"].tolist() == [0, 0, 0, 1, 1, 2, 2]
    assert v.splits["val"].tolist() == [0, 1, 2, 2]
    assert v.counts.tolist() == [3, 2, 2] and v.meta["vocab_size"] == 3


def test_unigram_loss_is_the_smoothed_train_frequencies_on_val():
    d = _Data([1, 1, 1, 2], [1, 2, 2])
    v = small_vocab(d, 3)                      # 1 -> 0, 2 -> 1, UNK 2 (unseen)
    p = np.array([3 + 1, 1 + 1, 0 + 1]) / (4 + 3)
    assert unigram_loss(v) == pytest.approx(-(np.log(p[0]) + 2 * np.log(p[1])) / 3)


def test_decode_shows_unk():
    class Enc:
        def decode(self, ids):
            return "".join(chr(ord("a") + i) for i in ids)
    v = small_vocab(_Data([0, 0, 1, 5], [0]), 3)   # keeps 0, 1
    assert v.decode([0, 2, 1], Enc(), unk="?") == "a?b"


def test_rejects_a_vocabulary_without_room_for_unk():
    with pytest.raises(ValueError, match="at least 2"):
        small_vocab(_Data([1], [1]), 1)
