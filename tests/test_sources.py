"""The source walkthrough (lossmap.sources + the Keras 3 anchors) and the user call sites.

Line numbers are checked against `inspect`, never against numbers written here.
"""
import dataclasses
import importlib
import inspect
import sys
import textwrap
from types import SimpleNamespace

import libcst.matchers as m
import numpy as np
import pytest

import keras
from keras import layers, ops, regularizers

import lossmap
from lossmap import pipeline, sources
from lossmap.sources import index
from lossmap.analysis import Term
from lossmap.engines.common.anchor_kit import number
from lossmap.engines.common.helpers import code_origin
from lossmap.engines.keras3 import anchors as keras3_anchors

pytestmark = [pytest.mark.filterwarnings("ignore:Gradients do not exist:UserWarning")]


# ---------------------------------------------------------------- user code the tests point at
class Penalised(layers.Layer):
    """add_loss two helper calls away from call(): call -> _penalise -> _record."""

    def call(self, x):
        return self._penalise(x)

    def _penalise(self, x):
        self._record(x)
        return x

    def _record(self, x):
        # a non-scalar tensor: Keras sums all of it
        self.add_loss(0.01 * ops.square(x))

    def unused(self, x):
        self.add_loss(ops.sum(x))  # never reached from call(): not a call site


class PenaltyBase(layers.Layer):
    def _penalty(self, x):
        self.add_loss(ops.mean(x))

    def call(self, x):
        return x


class InheritsPenalty(PenaltyBase):
    """add_loss in a base class's helper (same file), reached through super().call and self._penalty."""

    def call(self, x):
        self._penalty(x)
        return super().call(x)


def scaled_mse(y_true, y_pred):
    """A custom loss function."""
    return 2.0 * ops.mean(ops.square(y_true - y_pred), axis=-1)


class HalfL1(regularizers.Regularizer):
    def __call__(self, x):
        return 0.5 * ops.sum(ops.abs(x))


class TwiceMae(keras.losses.Loss):
    def call(self, y_true, y_pred):
        return 2.0 * ops.mean(ops.abs(y_true - y_pred), axis=-1)


def line_of(obj, text):
    """The real line number of the first line of `obj`'s source containing `text` (via inspect)."""
    lines, start = inspect.getsourcelines(obj)
    hits = [start + i for i, line in enumerate(lines) if text in line]
    assert hits, f"{text!r} not in the source of {obj}"
    return hits[0]


def start_of(obj):
    return inspect.getsourcelines(obj)[1]


def highlighted(lines):
    return [sl for sl in lines if sl.highlight]


def f32(a):
    return np.asarray(a, dtype="float32")


# ---------------------------------------------------------------- the model that uses every step
@pytest.fixture(scope="module")
def full(tmp_path_factory):
    """Two outputs with loss weights, a mask, sample weights, an activity and a kernel regularizer,
    a non-scalar add_loss reached through helpers, a softmax output scored with sparse CE."""
    keras.utils.set_random_seed(1)
    tokens = keras.Input((5,), dtype="int32", name="tokens")
    emb = layers.Embedding(10, 4, mask_zero=True, name="emb")(tokens)
    seq = layers.Dense(1, name="seq")(emb)  # keeps the Embedding's mask
    pooled = layers.GlobalAveragePooling1D(name="pool")(emb)
    h = Penalised(name="pen")(pooled)
    cls = layers.Dense(3, activation="softmax", activity_regularizer=regularizers.L2(0.01),
                       kernel_regularizer=regularizers.L2(0.001), name="cls")(h)
    model = keras.Model(tokens, [cls, seq], name="everything")
    model.compile(keras.optimizers.SGD(0.1), loss={"cls": "sparse_categorical_crossentropy", "seq": "mse"},
                  loss_weights={"cls": 0.4, "seq": 0.6})
    path = tmp_path_factory.mktemp("batch") / "batch.npz"
    toks = np.array([[1, 2, 3, 0, 0], [4, 5, 0, 0, 0], [6, 7, 8, 9, 0], [1, 0, 0, 0, 0]], dtype="int32")
    np.savez(path, **{
        "x/tokens": toks,
        "y/cls": np.array([0, 1, 2, 1], dtype="int32"),
        "y/seq": f32(np.linspace(-1, 1, 20).reshape(4, 5, 1)),
        "sample_weight/cls": f32([1.0, 2.0, 0.5, 1.0]),
        "sample_weight/seq": f32([[1.0, 1.0, 2.0, 1.0, 1.0]] * 4),  # with the mask: both merged
    })
    analysis = lossmap.analyse(model, data=str(path), gradients=False)
    assert analysis.total.verified
    return analysis


def step(analysis, key):
    hits = [s for s in analysis.walkthrough if s.key == key]
    assert len(hits) == 1, [s.key for s in analysis.walkthrough]
    return hits[0]


def note_lines(s):
    return [sl for sl in s.lines if sl.note]


def line_with_note(s, words):
    hits = [sl for sl in s.lines if sl.note and words in sl.note]
    assert hits, (words, [sl.note for sl in note_lines(s)])
    return hits[0]


def _resolve(module, qualname):
    obj = importlib.import_module(module)
    for part in qualname.split("."):
        obj = getattr(obj, part)
    return inspect.unwrap(obj.fget if isinstance(obj, property) else obj)


# ---------------------------------------------------------------- every anchor exists in the installed Keras
@pytest.mark.parametrize("anchor", keras3_anchors.anchors(), ids=lambda a: a.key)
def test_every_anchor_and_statement_is_found(anchor):
    """Each anchor with *all* its statements (whatever the model), at the lines inspect gives."""
    stmts = [dataclasses.replace(sources.as_stmt(s), note=None, when=None) for s in anchor.statements]
    s = sources.locate(anchor.module, anchor.qualname, stmts, key=anchor.key)
    assert s.found, s.missing
    assert s.missing is None
    fn = _resolve(anchor.module, anchor.qualname)
    src_lines, start = inspect.getsourcelines(fn)
    assert s.start_line == start
    assert s.end_line == start + len(src_lines) - 1
    assert [sl.text for sl in s.lines] == [line.rstrip("\n") for line in src_lines]
    assert [sl.number for sl in s.lines] == list(range(start, start + len(src_lines)))
    assert s.file == inspect.getsourcefile(fn)
    assert s.display_path.startswith("keras/src/") and s.display_path.endswith(".py")
    assert len(highlighted(s.lines)) >= len({id(st) for st in stmts}) > 0 or not stmts


def test_the_model_uses_every_step(full):
    keys = [s.key for s in full.walkthrough]
    for key in ("train_step", "compute_loss", "compiled_loss", "loss_call", "loss_function_wrapper",
                "get_logits", "reduce_weighted_values", "apply_mask", "reduce_values",
                "scale_loss_for_distribution", "layer_call_activity", "layer_add_loss", "layer_losses",
                "regularization_losses", "regularizer_L2", "aggregate_additional_loss"):
        assert key in keys
    # only what this model uses
    assert not {"regularizer_L1", "regularizer_L1L2", "regularizer_OrthogonalRegularizer"} & set(keys)
    assert all(s.found and s.missing is None for s in full.walkthrough), \
        [(s.key, s.missing) for s in full.walkthrough if not s.found]
    assert keys.index("train_step") < keys.index("compute_loss") < keys.index("compiled_loss")


# what each step's highlighted lines must contain (whole statements: any of its lines)
EXPECTED = {
    "train_step": ["self._compute_loss(", "self._loss_tracker.update_state(", "tape.gradient(loss",
                   "self.optimizer.apply_gradients("],
    "compute_loss": ["self._compile_loss(y, y_pred, sample_weight)", "for loss in self.losses",
                     "self._aggregate_additional_loss(loss)", "ops.sum(losses)"],
    "aggregate_additional_loss": ["return ops.sum(loss)"],
    "compiled_loss": ["loss_fn(y_t, y_p, _sample_weight)", "ops.multiply(value, loss_weight)",
                     "metric.update_state(", "sum(loss_values)"],
    "loss_call": ["in_mask = backend.get_keras_mask(y_pred)", "self.call(y_true, y_pred)",
                  "reduce_weighted_values("],
    "loss_function_wrapper": ["self.fn(y_true, y_pred, **self._fn_kwargs)"],
    "get_logits": ["hasattr(output, \"_keras_logits\")", "output._keras_logits"],
    "reduce_weighted_values": ["apply_mask(", "values * sample_weight", "reduce_values(values"],
    "apply_mask": ["ops.divide_no_nan(total, valid)", "sample_weight *= float_mask"],
    "reduce_values": ["ops.sum(values)", "divisor = ops.cast(", "ops.prod(", "ops.divide_no_nan(loss, divisor)",
                      "scale_loss_for_distribution(loss)"],
    "scale_loss_for_distribution": ["num_replicas_in_sync", "1.0 / num_replicas"],
    "layer_call_activity": ["self.activity_regularizer(output)", "ops.divide_no_nan(loss, batch_size)",
                            "self.add_loss(loss)"],
    "layer_add_loss": ["tree.flatten(loss)", "self._losses.extend(losses)"],
    "layer_losses": ["self._get_own_losses()", "self._flatten_layers(include_self=False)",
                     "losses.extend(layer._get_own_losses())", "self._get_regularization_losses()",
                     "losses.extend(weight_regularization_losses)"],
    "regularization_losses": ["for variable in self.trainable_weights", "variable.regularizer(v)"],
    "regularizer_L2": ["ops.sum(ops.square(x))"],
}


@pytest.mark.parametrize("key", sorted(EXPECTED))
def test_highlighted_lines_hold_their_statements(full, key):
    s = step(full, key)
    text = "\n".join(sl.text for sl in highlighted(s.lines))
    for piece in EXPECTED[key]:
        assert piece in text, (key, piece, text)
    # a note sits on a highlighted line, and every highlighted block is real code (not blank / comment)
    for sl in s.lines:
        assert not sl.note or sl.highlight
    for sl in highlighted(s.lines):
        assert sl.text.strip() and not sl.text.strip().startswith("#")


def test_notes_carry_the_models_names_and_numbers(full):
    cls, seq = full.term("compiled/cls"), full.term("compiled/seq")
    n = number
    mult = line_with_note(step(full, "compiled_loss"), "multiplied by 0.4")
    assert "multiply" in mult.text and "loss_weight" in mult.text
    assert f"cls's {n(cls.value)} is multiplied by 0.4" in mult.note
    assert f"seq's {n(seq.value)} is multiplied by 0.6" in mult.note
    metric = line_with_note(step(full, "compiled_loss"), "unweighted")
    assert "update_state" in metric.text and f"cls_loss records {n(cls.value)}" in metric.note
    total = line_with_note(step(full, "compute_loss"), "(compiled)")
    assert "ops.sum(losses)" in total.text
    assert total.note.endswith(f"= {n(full.total.reproduced)}")
    for t in full.terms:
        if t.kind != "compiled":
            assert f"{n(t.contribution)} ({t.id})" in total.note
    agg = line_with_note(step(full, "aggregate_additional_loss"), "add_loss/pen/0")
    assert "[4, 4]" in agg.note and "all 16 entries" in agg.note
    act = line_with_note(step(full, "layer_call_activity"), "divided by the batch size 4")
    assert "divide_no_nan" in act.text and act.note.startswith("cls:")
    reg = line_with_note(step(full, "regularization_losses"), "cls/kernel")
    assert "regularizer(v)" in reg.text and n(full.term("regularizer/cls/kernel").value) in reg.note
    mask = line_with_note(step(full, "apply_mask"), "seq")
    assert "divide_no_nan(total, valid)" in mask.text and "mask:" in mask.note
    logits = line_with_note(step(full, "get_logits"), "cls")
    assert "_keras_logits" in logits.text
    for s in full.walkthrough:
        assert isinstance(s.explanation, str) and len(s.explanation) > 80


def test_steps_are_plain_data(full):
    def plain(obj):
        if isinstance(obj, (str, int, bool, type(None))):
            return True
        if isinstance(obj, list):
            return all(plain(v) for v in obj)
        if isinstance(obj, dict):
            return all(isinstance(k, str) and plain(v) for k, v in obj.items())
        if dataclasses.is_dataclass(obj):
            return all(plain(getattr(obj, f.name)) for f in dataclasses.fields(obj))
        return False

    assert plain(full.walkthrough) and plain(full.call_sites)
    doc = full.to_dict()
    assert "walkthrough" not in doc and "call_sites" not in doc


# ---------------------------------------------------------------- wrong anchors say so
def test_missing_function_is_reported_not_guessed():
    s = sources.locate(keras3_anchors.COMPILE_UTILS, "CompileLoss.no_such_method", [], key="x")
    assert s.found is False and s.lines == []
    assert "CompileLoss.no_such_method" in s.missing and "no_such_method not found" in s.missing
    s = sources.locate(keras3_anchors.COMPILE_UTILS, "NoSuchClass.call", [])
    assert s.found is False and "NoSuchClass" in s.missing


def test_missing_statement_is_reported_not_guessed():
    good = (m.Call(func=m.Name("loss_fn")), "fine")
    bad = sources.Stmt(m.Call(func=m.Name("no_such_function")), "never shown", "no_such_function(...)")
    s = sources.locate(keras3_anchors.COMPILE_UTILS, "CompileLoss.call", [good, bad])
    assert s.found is False and s.lines == []
    assert "no_such_function(...)" in s.missing and "CompileLoss.call" in s.missing
    fn = _resolve(keras3_anchors.COMPILE_UTILS, "CompileLoss.call")
    assert s.start_line == start_of(fn)  # where it looked, for the message


def test_missing_module_is_reported():
    s = sources.locate("keras.src.no_such_module", "f", [])
    assert s.found is False and "keras.src.no_such_module" in s.missing and s.file is None


def test_a_broken_anchor_does_not_hide_the_others(full):
    def boom(a):
        raise RuntimeError("note builder broke")

    anchors = [
        sources.Anchor("bad", "Bad", keras3_anchors.LOSS, "reduce_values", "x",
                       [sources.Stmt(m.Return(), boom)]),
        sources.Anchor("unused", "Unused", keras3_anchors.LOSS, "reduce_values", "x", [], when=lambda a: False),
        sources.Anchor("good", "Good", keras3_anchors.LOSS, "reduce_values", "x", [(m.Return(), "ok")]),
    ]
    steps = sources.walkthrough(full, anchors)
    assert [s.key for s in steps] == ["bad", "good"]
    assert steps[0].found is False and "note builder broke" in steps[0].missing
    assert steps[1].found is True


def test_pipeline_stage_never_fails_the_analysis(full):
    class Broken:
        def walkthrough_anchors(self):
            raise RuntimeError("anchors exploded")

    a = SimpleNamespace(**{f.name: getattr(full, f.name) for f in dataclasses.fields(full)})
    pipeline._sources(a, Broken())
    assert len(a.walkthrough) == 1 and a.walkthrough[0].found is False
    assert "anchors exploded" in a.walkthrough[0].missing
    assert "add_loss/pen/0" in a.call_sites


# ---------------------------------------------------------------- where the additional losses come from
def test_add_loss_in_a_helper_is_found(full):
    sites = full.call_sites["add_loss/pen/0"]
    assert [s.qualname for s in sites] == ["Penalised.call", "Penalised._penalise", "Penalised._record"]
    assert all(s.found and s.file == inspect.getsourcefile(Penalised) for s in sites)
    assert all(s.display_path.endswith("tests/test_sources.py") for s in sites)
    record = sites[-1]
    assert record.start_line == start_of(Penalised._record)
    (hl,) = highlighted(record.lines)
    assert hl.number == line_of(Penalised._record, "self.add_loss(")
    assert "add_loss/pen/0 = " in hl.note and "shape [4, 4]" in hl.note
    call = sites[0]
    (hl,) = highlighted(call.lines)
    assert hl.number == line_of(Penalised.call, "self._penalise(x)") and "Penalised._penalise" in hl.note
    # `unused` calls add_loss too but call() never reaches it
    assert all(s.qualname != "Penalised.unused" for s in sites)


def _term(term_id, kind, obj, **kw):
    base = dict(output=None, layer=None, variable=None, fn=None, config=None, value=0.25, weight=1.0,
                contribution=0.25, opaque=True)
    base.update(kw)
    return Term(id=term_id, kind=kind, origin=code_origin(obj), **base)


def test_add_loss_in_a_base_class_helper_is_found():
    a = SimpleNamespace(terms=[_term("add_loss/inh/0", "add_loss", InheritsPenalty(name="inh"), layer="inh")])
    sites = sources.user_call_sites(a)["add_loss/inh/0"]
    assert [s.qualname for s in sites] == ["InheritsPenalty.call", "PenaltyBase._penalty"]
    (hl,) = highlighted(sites[1].lines)
    assert hl.number == line_of(PenaltyBase._penalty, "self.add_loss(")
    assert sites[1].start_line == start_of(PenaltyBase._penalty)


def test_custom_loss_function_and_classes_are_found():
    a = SimpleNamespace(terms=[
        _term("compiled/out", "compiled", scaled_mse, output="out", weight=0.5, contribution=0.125),
        _term("regularizer/d/kernel", "weight_regularizer", HalfL1(), variable="d/kernel", fn="HalfL1"),
        _term("compiled/other", "compiled", TwiceMae(), output="other", fn="TwiceMae"),
    ])
    sites = sources.user_call_sites(a)
    (fn_site,) = sites["compiled/out"]
    assert fn_site.found and fn_site.qualname == "scaled_mse"
    assert fn_site.start_line == start_of(scaled_mse) and fn_site.file == inspect.getsourcefile(scaled_mse)
    (hl,) = highlighted(fn_site.lines)
    assert hl.number == line_of(scaled_mse, "def scaled_mse")
    assert "compiled/out" in hl.note and "output 'out'" in hl.note and "0.125" in hl.note
    (reg,) = sites["regularizer/d/kernel"]
    assert reg.qualname == "HalfL1.__call__" and reg.start_line == start_of(HalfL1.__call__)
    assert "d/kernel" in highlighted(reg.lines)[0].note
    (loss,) = sites["compiled/other"]
    assert loss.qualname == "TwiceMae.call" and loss.start_line == start_of(TwiceMae.call)


def test_third_party_code_in_site_packages(tmp_path, monkeypatch):
    """A layer from an installed package: same lookup, and a short display path."""
    pkg = tmp_path / "lib" / "python3.11" / "site-packages" / "fancylayers"
    pkg.mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "core.py").write_text(textwrap.dedent('''\
        import keras
        from keras import ops


        def _scaled(x):
            return 0.1 * ops.mean(x)


        class Fancy(keras.layers.Layer):
            @staticmethod
            def _unrelated():
                return None

            def call(self, x):
                self.penalise(x)
                return x

            def penalise(self, x):
                self.add_loss(_scaled(x))
        '''))
    monkeypatch.syspath_prepend(str(pkg.parent))
    core = importlib.import_module("fancylayers.core")
    try:
        a = SimpleNamespace(terms=[_term("add_loss/fancy/0", "add_loss", core.Fancy(name="fancy"))])
        sites = sources.user_call_sites(a)["add_loss/fancy/0"]
        assert [s.qualname for s in sites] == ["Fancy.call", "Fancy.penalise"]
        assert all(s.display_path == "fancylayers/core.py" for s in sites)
        assert sites[1].start_line == start_of(core.Fancy.penalise)
        assert highlighted(sites[1].lines)[0].number == line_of(core.Fancy.penalise, "self.add_loss(")
    finally:
        sys.modules.pop("fancylayers.core", None)
        sys.modules.pop("fancylayers", None)


def test_no_add_loss_found_says_so():
    class Quiet(layers.Layer):
        def call(self, x):
            return x

    a = SimpleNamespace(terms=[_term("add_loss/q/0", "add_loss", Quiet(name="q"))])
    (site,) = sources.user_call_sites(a)["add_loss/q/0"]
    assert site.found is False and "Quiet" in site.missing and site.lines == []


def test_source_not_available():
    t = _term("add_loss/x/0", "add_loss", scaled_mse)
    t.origin = dict(t.origin, file=None)
    (site,) = sources.user_call_sites(SimpleNamespace(terms=[t]))["add_loss/x/0"]
    assert site.found is False and "not available" in site.missing


def test_display_path():
    assert sources.display_path("/usr/lib/python3.11/site-packages/keras/src/trainers/trainer.py") == \
        "keras/src/trainers/trainer.py"
    assert sources.display_path("/x/dist-packages/pkg/m.py") == "pkg/m.py"


# ---------------------------------------------------------------- parsing strategies and cost
def test_short_parse_and_whole_file_parse_agree(full, monkeypatch):
    """The fast path (each definition parsed alone) shows exactly what a whole-file libcst parse shows."""
    fast = sources.walkthrough(full, keras3_anchors.anchors())
    fast_sites = sources.user_call_sites(full)
    monkeypatch.setattr(index, "_FULL_PARSE", True)
    slow = sources.walkthrough(full, keras3_anchors.anchors())
    slow_sites = sources.user_call_sites(full)
    assert fast == slow
    assert fast_sites == slow_sites


def test_stage_reads_and_parses_each_file_once(full):
    """The stage is cheap by construction, not by a stopwatch (the machines are shared): a second
    walkthrough reads and parses nothing again; every definition and source comes from the caches."""
    index._definition_cached.cache_clear()
    index._source_cached.cache_clear()
    sources.walkthrough(full, keras3_anchors.anchors())
    sources.user_call_sites(full)
    cold = (index._definition_cached.cache_info(), index._source_cached.cache_info())
    assert cold[0].misses > 0 and cold[1].misses > 0
    sources.walkthrough(full, keras3_anchors.anchors())
    sources.user_call_sites(full)
    warm = (index._definition_cached.cache_info(), index._source_cached.cache_info())
    assert [w.misses for w in warm] == [c.misses for c in cold], (cold, warm)
    assert all(w.hits > c.hits for w, c in zip(warm, cold)), (cold, warm)
