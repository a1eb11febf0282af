"""`make site`: build lossmap's learning site into _site/ (see site/README.md).

    python site/build.py [--out DIR] [--only SLUG ...]
"""
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:0] = [os.path.dirname(HERE), HERE]  # this checkout's lossmap, and sitegen
os.environ.setdefault("KERAS_BACKEND", "tensorflow")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

from sitegen.build import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
