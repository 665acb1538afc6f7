"""`--help` is where a user reads a verb's defaults (the README quotes them): every option with a default
shows it, zero included; several values show as they are typed."""

from __future__ import annotations

import pytest

from trainer.cli import main


def test_pretrain_help_shows_every_default(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["pretrain", "--help"])
    assert exit_info.value.code == 0
    text = " ".join(capsys.readouterr().out.split())  # argparse wraps lines
    assert "triplets per round (default: 20000)" in text
    assert "fixes data subsets, triplets, initialisation (default: 0)" in text
    assert "source rescale sizes in px (default: 512 256 128 64)" in text
    assert "bounds memory (0: all) (default: 60)" in text
    assert "(default: False)" not in text  # flags say nothing
    assert "torch threads (default: torch's choice)" in text  # a help naming its default is left as it is
