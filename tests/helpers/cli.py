"""How a refused command must answer: one line on stderr, exit code 2, no traceback."""


def one_line_error(capsys, code: int, *expected: str) -> str:
    err = capsys.readouterr().err
    assert code == 2, err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    assert err.startswith("time-ray: error: "), err
    for text in expected:
        assert text in err, err
    return err
