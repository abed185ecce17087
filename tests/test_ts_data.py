"""The examples' .ts reader (examples/ts_data.py), on small inline files."""
import os
import sys

import numpy as np
import pytest

sys.path.insert(0, os.path.join(os.path.dirname(__file__), os.pardir, "examples"))
import ts_data  # noqa: E402

MULTIVARIATE = """\
# a comment
% another comment style (seen in aeon's UnitTest files)
@problemName Tiny
@timeStamps false
@missing false
@univariate false
@dimensions 2
@equalLength false
@classLabel true a b c

@data
1,2,3:4,5,6:b
-1.5,2e-1:7,8:a
0.5:?:c
1,2,?,?:3,4,?,?:a
"""


def test_multivariate_variable_length():
    d = ts_data.parse_ts(MULTIVARIATE)
    assert d.name == "Tiny"
    assert d.classes == ["a", "b", "c"]
    assert d.labels.tolist() == [1, 0, 2, 0]
    assert d.channels == 2 and len(d) == 4
    # the trailing all-missing steps of the last case are padding, not data
    assert d.lengths.tolist() == [3, 2, 1, 2]
    assert d.series[0].dtype == np.float32
    np.testing.assert_array_equal(d.series[0], [[1, 4], [2, 5], [3, 6]])
    np.testing.assert_allclose(d.series[1], [[-1.5, 7], [0.2, 8]])
    # a value missing in only some dimensions stays NaN
    assert d.series[2][0, 0] == 0.5 and np.isnan(d.series[2][0, 1])
    np.testing.assert_array_equal(d.series[3], [[1, 3], [2, 4]])


def test_keep_missing_tail():
    d = ts_data.parse_ts(MULTIVARIATE, strip_missing_tail=False)
    assert d.lengths.tolist() == [3, 2, 1, 4]
    assert np.isnan(d.series[3][2:]).all()


def test_univariate_without_dimensions_header(tmp_path):
    text = "@problemName Uni\n@univariate true\n@classLabel true 1 2\n@data\n1,2,3,4:2\n5,6,7,8:1\n"
    path = tmp_path / "Uni_TRAIN.ts"
    path.write_text(text)
    d = ts_data.load_ts(str(path))
    assert d.channels == 1 and d.lengths.tolist() == [4, 4] and d.labels.tolist() == [1, 0]
    np.testing.assert_array_equal(d.series[1][:, 0], [5, 6, 7, 8])
    # find_split with data_dir: the file directly in it, or in <problem>/ below it
    assert ts_data.find_split("Uni", "train", data_dir=str(tmp_path)) == str(path)
    sub = tmp_path / "nested" / "Uni"
    sub.mkdir(parents=True)
    (sub / "Uni_TEST.ts").write_text(text)
    assert ts_data.load_split("Uni", "TEST", data_dir=str(tmp_path / "nested")).labels.tolist() == [1, 0]


@pytest.mark.parametrize(
    "text, message",
    [
        ("@classLabel true 1 2\n@data\n1,2:3\n", "class label '3'"),
        ("@dimensions 2\n@classLabel true 1\n@data\n1,2:1\n", "expected 2 dimension"),
        ("@classLabel true 1\n@data\n1,2:3,4,5:1\n", "different lengths"),
        ("@classLabel true 1\n@data\n1,x:1\n", "bad value"),
        ("@classLabel true 1\n1,2:1\n", "header line"),
        ("@classLabel true 1\n", "no @data"),
        ("@classLabel true 1\n@data\n", "no cases"),
        ("@classLabel false\n@data\n1,2\n", "classLabel"),
        ("@timeStamps true\n@classLabel true 1\n@data\n(2007-01-01 00:00:00,1.0):1\n", "timestamped"),
        ("@classLabel true 1\n@data\n?,?:1\n", "no values"),
    ],
)
def test_bad_files_are_reported(text, message):
    with pytest.raises(ValueError, match=message):
        ts_data.parse_ts(text)


def test_missing_package_message(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"pip install --no-deps aeon"):
        ts_data.find_split("JapaneseVowels", "TRAIN", packages=("no_such_package_rnnattn",))
    with pytest.raises(FileNotFoundError, match="--data-dir"):
        ts_data.find_split("JapaneseVowels", "TEST", data_dir=str(tmp_path))
    with pytest.raises(ValueError, match="TRAIN"):
        ts_data.find_split("JapaneseVowels", "VALID", data_dir=str(tmp_path))


def test_installed_package_data_if_present():
    """When aeon or sktime is installed, the real JapaneseVowels split is read
    with the published shape (270/370 cases, 12 channels, lengths 7..29)."""
    try:
        train = ts_data.load_split("JapaneseVowels", "TRAIN")
        test = ts_data.load_split("JapaneseVowels", "TEST")
    except FileNotFoundError:
        pytest.skip("neither aeon nor sktime is installed (pip install --no-deps aeon)")
    assert (len(train), len(test)) == (270, 370)
    assert train.channels == test.channels == 12
    lengths = np.concatenate([train.lengths, test.lengths])
    assert lengths.min() == 7 and lengths.max() == 29
    assert np.bincount(train.labels).tolist() == [30] * 9
    assert not any(np.isnan(s).any() for s in train.series + test.series)
