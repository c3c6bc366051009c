"""Package-level contracts: light import without torch, public names exist, CLI basics."""

import subprocess
import sys
import textwrap

import acula_edge

BLOCK_TORCH = textwrap.dedent("""
    import sys
    class BlockTorch:
        def find_spec(self, name, path=None, target=None):
            if name == "torch" or name.startswith("torch."):
                raise ImportError("torch is blocked in this test")
            return None
    sys.meta_path.insert(0, BlockTorch())
""")


def test_every_public_name_exists():
    for name in acula_edge.__all__:
        assert hasattr(acula_edge, name), name


def test_import_and_front_end_work_without_torch():
    code = BLOCK_TORCH + textwrap.dedent("""
        import numpy as np
        import acula_edge
        from acula_edge import LogMel, preset, load_dataset
        import acula_edge.cli, acula_edge.manifest, acula_edge.windows, acula_edge.checkpoint
        fe, win = preset("heart")
        out = LogMel(fe)(np.random.default_rng(0).standard_normal(8000).astype(np.float32))
        assert out.shape == (win.frames_per_window(fe), fe.n_mels)
        assert "torch" not in sys.modules
        print("ok")
    """)
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "ok"


def test_cli_help_lists_every_stage_and_version():
    done = subprocess.run([sys.executable, "-c", "from acula_edge.cli import main; main()", "--help"],
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    for command in ("align", "distill", "export", "verify", "stream", "classify", "bench", "pipeline", "info",
                    "features"):
        assert command in done.stdout
    done = subprocess.run([sys.executable, "-c", "from acula_edge.cli import main; main()", "--version"],
                          capture_output=True, text=True)
    assert acula_edge.__version__ in done.stdout


def test_cli_user_error_is_one_line_without_traceback(tmp_path):
    done = subprocess.run([sys.executable, "-c", "from acula_edge.cli import main; main()", "features",
                           str(tmp_path / "missing.wav")], capture_output=True, text=True)
    assert done.returncode == 2
    assert done.stderr.strip().startswith("error:") and "no such file" in done.stderr
    assert "Traceback" not in done.stderr


def test_features_command_summarises_a_file(tmp_path):
    import numpy as np
    import soundfile as sf

    sf.write(tmp_path / "a.wav", 0.1 * np.random.default_rng(0).standard_normal(4000 * 5), 4000)
    done = subprocess.run([sys.executable, "-c", "from acula_edge.cli import main; main()", "features",
                           str(tmp_path / "a.wav"), "--json"], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    import json

    summary = json.loads(done.stdout)
    assert summary["file_sample_rate_hz"] == 4000 and summary["model_sample_rate_hz"] == 2000
    assert summary["duration_s"] == 5.0 and summary["frames"] == 246


def test_code_refers_to_no_issue_numbers():
    """Comments say why in words; an issue number means nothing to a reader of the shipped code."""
    import re
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    pattern = re.compile(r"\bissues? ?#?\d+\b", re.IGNORECASE)
    found = [f"{p.relative_to(root)}:{n}" for folder in ("acula_edge", "align", "distill", "export", "tests")
             for p in sorted((root / folder).rglob("*")) if p.suffix in (".py", ".c", ".h")
             for n, line in enumerate(p.read_text(encoding="utf-8").splitlines(), 1) if pattern.search(line)]
    assert not found, found
