"""TensorFlow's native start-up notices are dropped at the file-descriptor level; real messages are kept.

These tests write to fd 2 themselves, in a child process, so they do not depend on which CPU
flags TensorFlow detects on the machine that runs them.
"""
import subprocess
import sys
import textwrap


def _child(body: str):
    code = textwrap.dedent('''
        import os, sys
        from lossmap.quiet import native_stderr_filtered
        with native_stderr_filtered():
    ''') + textwrap.indent(textwrap.dedent(body), "    ") + "print('after', file=sys.stderr)\n"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    return proc.stderr


def test_native_startup_notices_are_dropped():
    err = _child('''
        os.write(2, b"WARNING: All log messages before absl::InitializeLog() is called are written to STDERR\\n")
        os.write(2, b"I0000 00:00:1.1 4446 port.cc:153] oneDNN custom operations are on. You may see ...\\n")
        os.write(2, b"I0000 00:00:1.2 4446 cpu_feature_guard.cc:227] This TensorFlow binary is optimized ...\\n")
        os.write(2, b"To enable the following instructions: AVX2 FMA, in other operations, rebuild ...\\n")
    ''')
    assert err == "after\n"


def test_other_native_and_python_output_is_kept_in_order():
    err = _child('''
        os.write(2, b"E0000 something real went wrong\\n")
        print("a python warning", file=sys.stderr)
        os.write(2, b"I0000 port.cc:153] oneDNN custom operations are on.\\n")
    ''')
    assert err == "E0000 something real went wrong\na python warning\nafter\n"


def test_importing_tensorflow_through_lossmap_prints_nothing():
    code = "from lossmap.quiet import import_tensorflow; import_tensorflow(); import keras"
    env = {"PATH": "/usr/bin:/bin", "HOME": "/tmp"}  # no TF_CPP_MIN_LOG_LEVEL from the caller
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, env=env)
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr == ""


def test_on_another_backend_a_tensorflow_import_by_user_code_is_filtered_too(tmp_path):
    """Keras on JAX or torch imports no TensorFlow, but a user's factory or step may: that import,
    whoever makes it, drops the same notices (a stand-in `tensorflow` writes them, whatever the CPU)."""
    fake = tmp_path / "tensorflow"
    fake.mkdir()
    (fake / "__init__.py").write_text(textwrap.dedent('''
        import os
        os.write(2, b"I0000 00:00:1.1 4446 port.cc:153] oneDNN custom operations are on. You may see ...\\n")
        os.write(2, b"E0000 something real went wrong\\n")
        MARK = "the stand-in"
    '''))
    code = textwrap.dedent(f'''
        import sys
        sys.path.insert(0, {str(tmp_path)!r})
        from lossmap.quiet import import_backend
        import_backend()
        import tensorflow
        assert tensorflow.MARK == "the stand-in"
    ''')
    env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "KERAS_BACKEND": "jax"}
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, env=env)
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr == "E0000 something real went wrong\n"
