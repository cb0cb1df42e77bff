"""TailFlow's readers against hostile inputs: each format's range table, symlink loops."""

from pathlib import Path

import pytest

from steps.errors import InputError
from steps.tail.data import read_ml20m, read_msd, read_netflix
from tests.badfiles import symlink_loop


def _write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


ML = "userId,movieId,rating,timestamp\n1,10,4.0,5\n"


@pytest.mark.parametrize("line, message", [
    ("2,10,99,7", r"ratings.csv: column 'rating', line 3 \('99'\): value 99 is outside the valid range \(MovieLens half-star ratings: 0.5 to 5\)"),
    ("2,10,-5,7", r"column 'rating', line 3 \('-5'\): value -5 is outside"),
    ("2,10,0,7", r"column 'rating', line 3 \('0'\): value 0 is outside"),
    ("0,10,4.0,7", r"column 'userId', line 3 \('0'\): value 0 is outside the valid range \(user ids: 1 to 2147483647\)"),
    ("-3,10,4.0,7", r"column 'userId', line 3 \('-3'\): value -3 is outside"),
    ("2,0,4.0,7", r"column 'movieId', line 3 \('0'\): value 0 is outside the valid range \(movie ids"),
    ("2,10000000000,4.0,7", r"column 'movieId', line 3 \('10000000000'\): value 10000000000 is outside"),
])
def test_ml20m_ranges(tmp_path, line, message):
    with pytest.raises(InputError, match=message):
        read_ml20m(_write(tmp_path / "ratings.csv", ML + line + "\n"))


@pytest.mark.parametrize("text, message", [
    ("1:\n6,99,2005-09-06\n", r"mv_0000001.txt: column 'Rating', line 2 \('99'\): value 99 is outside the valid range \(Netflix star ratings: 1 to 5\)"),
    ("1:\n6,0,2005-09-06\n", r"column 'Rating', line 2 \('0'\): value 0 is outside"),
    ("1:\n-6,3,2005-09-06\n", r"column 'CustomerID', line 2 \('-6'\): value -6 is outside the valid range \(customer ids"),
    ("0:\n6,3,2005-09-06\n", r"column 'MovieID', line 1 \('0'\): value 0 is outside the valid range \(movie ids"),
])
def test_netflix_ranges(tmp_path, text, message):
    with pytest.raises(InputError, match=message):
        read_netflix(_write(tmp_path / "training_set" / "mv_0000001.txt", text))


@pytest.mark.parametrize("plays, message", [
    ("-4", r"train_triplets.txt: column 'plays', line 2 \('-4'\): value -4 is outside the valid range \(play counts"),
    ("0", r"column 'plays', line 2 \('0'\): value 0 is outside"),
])
def test_msd_play_counts(tmp_path, plays, message):
    with pytest.raises(InputError, match=message):
        read_msd(_write(tmp_path / "train_triplets.txt", f"uA\tsX\t3\nuB\tsX\t{plays}\n"))


def test_symlink_loops_are_not_missing_files(tmp_path):
    with pytest.raises(InputError, match="ratings.csv: ratings file is a symbolic link loop"):
        read_ml20m(symlink_loop(tmp_path, "ratings.csv"))
    with pytest.raises(InputError, match="train_triplets.txt: train_triplets.txt is a symbolic link loop"):
        read_msd(symlink_loop(tmp_path, "train_triplets.txt"))
    with pytest.raises(InputError, match="training_set: Netflix Prize file or folder is a symbolic link loop"):
        read_netflix(symlink_loop(tmp_path, "training_set"))
    with pytest.raises(InputError, match="ratings file is a folder, expected a file"):
        read_ml20m(tmp_path)
