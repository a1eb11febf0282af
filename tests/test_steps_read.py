"""Reading and splitting a training step (libcst only, no TensorFlow): every construct, hand-checked.

The instrumented copy is run here on plain Python numbers with a fake tape, so the
decomposition's arithmetic is checked exactly and fast; tests/test_steps.py runs real steps.
"""
import math
import random
import textwrap

import pytest

from lossmap.steps.instrument import build, rewrite
from lossmap.steps.read import read_source
from lossmap.steps.split import split


def _split(src, name="step"):
    step = read_source(textwrap.dedent(src), name)
    return step, split(step)


def _addends(src, name="step"):
    _, parts = _split(src, name)
    return [(a.kind, a.expression, a.literal, len(a.factors)) for a in parts.addends]


TAPE = '''
def step(x, y):
    with tf.GradientTape() as tape:
        {body}
    grads = tape.gradient({target}, model.trainable_variables)
    optimizer.apply_gradients(zip(grads, model.trainable_variables))
'''


def _step(body, target="loss"):
    return TAPE.format(body=textwrap.indent(textwrap.dedent(body), " " * 8).strip(), target=target)


def test_sum_and_difference_and_sign():
    got = _addends(_step("loss = a_loss(x) + b_loss(x) - c_loss(x)"))
    assert got == [("custom", "a_loss(x)", 1.0, 0), ("custom", "b_loss(x)", 1.0, 0), ("custom", "-c_loss(x)", -1.0, 0)]


def test_numeric_and_variable_coefficients():
    got = _addends(_step("""
        data = mse(y, p)
        loss_x = phys(x)
        loss = data + 0.5 * loss_x + lam * other(x) - loss_x / 4
    """))
    assert got == [("custom", "data", 1.0, 0), ("custom", "0.5 * loss_x", 0.5, 0),
                   ("custom", "lam * other(x)", 1.0, 1), ("custom", "-loss_x / 4", -0.25, 0)]


def test_a_coefficient_distributes_over_a_sum():
    got = _addends(_step("loss = 2 * (a(x) + 3 * b(x)) - (c(x) - d(x))"))
    assert [(e, w) for _, e, w, _ in got] == [("2 * a(x)", 2.0), ("2 * 3 * b(x)", 6.0), ("-c(x)", -1.0),
                                              ("d(x)", 1.0)]


def test_add_n_sum_and_reduce_sum_of_lists_split():
    for call in ("tf.add_n", "sum", "tf.reduce_sum", "tf.math.add_n"):
        got = _addends(_step(f"loss = {call}([a(x), 0.1 * b(x)])"))
        assert got == [("custom", "a(x)", 1.0, 0), ("custom", "0.1 * b(x)", 0.1, 0)], call


def test_model_losses_and_keras_loss_calls_are_their_own_kind():
    got = _addends(_step("""
        pred_loss = loss_fn(y, model(x, training=True))
        reg = tf.reduce_sum(model.losses)
        loss = pred_loss + reg + sum(model.losses) + tf.add_n(model.losses) + model.compute_loss(x, y, p)
    """))
    assert [k for k, *_ in got] == ["custom", "model_losses", "model_losses", "model_losses", "keras_loss"]


def test_augmented_assignments_follow_back():
    step, parts = _split(_step("""
        loss = loss_fn(y, model(x, training=True))
        loss += sum(model.losses)
        loss -= 0.5 * extra(x)
    """))
    assert [(a.kind, a.expression, a.literal) for a in parts.addends] == [
        ("custom", "loss_fn(y, model(x, training=True))", 1.0), ("model_losses", "sum(model.losses)", 1.0),
        ("custom", "-0.5 * extra(x)", -0.5)]
    assert parts.addends[0].name == "loss"  # named after the variable that holds it


def test_augmented_assignment_on_a_parameter_is_rewritten():
    src = '''
    def step(x, y, base):
        with tf.GradientTape() as tape:
            base += penalty(x)
        grads = tape.gradient(base, model.trainable_variables)
        optimizer.apply_gradients(zip(grads, model.trainable_variables))
    '''
    step, parts = _split(src)
    assert [a.expression for a in parts.addends] == ["base", "penalty(x)"]
    assert "base = __lm__.value((0,), base) + (__lm__.value((1,), penalty(x)))" in rewrite(step, parts)


def test_a_single_scaled_quantity_stays_one_named_term():
    _, parts = _split(_step("""
        loss_x = 0.5 * tf.reduce_mean(tf.square(p - x))
        loss = data(x) + loss_x
    """))
    assert [(a.expression, a.name, a.literal) for a in parts.addends] == [("data(x)", "data", 1.0),
                                                                          ("loss_x", "loss_x", 1.0)]


def test_loops_and_branches_are_not_unrolled_and_say_why():
    step, parts = _split(_step("""
        loss = 0.0
        for term in terms:
            loss += term(x)
        if flag:
            extra = a(x) + b(x)
        else:
            extra = a(x)
        total = loss + extra
    """, target="total"))
    reasons = {a.expression: a.reason for a in parts.addends}
    assert "loop" in reasons["loss"] and "line 5" in reasons["loss"]
    assert "`if` block" in reasons["extra"]


def test_lines_are_the_files_lines():
    src = _step("""
        data = mse(y, p)
        loss = data + 0.5 * phys(x)
    """)
    step = read_source(src, "step", first_line=100)
    parts = split(step)
    # the source starts with a blank line: `def` is line 101, the first body line 103
    assert step.start_line == 101
    assert [(a.line, a.value_line) for a in parts.addends] == [(104, 103), (104, 104)]
    assert step.gradients[0].line == 105 and step.tapes[0].line == 102


def test_gradient_calls_are_objectives_or_input_gradients():
    step = read_source(textwrap.dedent('''
    def train_step(self, data):
        x, y = data
        with tf.GradientTape() as outer:
            with tf.GradientTape(persistent=True) as inner:
                inner.watch(x)
                p = self(x, training=True)
            dp_dx = inner.gradient(p, x)
            loss = mse(y, p) + tf.reduce_mean(dp_dx ** 2)
        grads = outer.gradient(loss, self.trainable_weights)
        self.optimizer.apply_gradients(zip(grads, self.trainable_weights))
    '''), "train_step")
    kinds = {g.tape: (g.kind, g.enclosing_tapes) for g in step.gradients}
    assert kinds == {"inner": ("input", ("outer",)), "outer": ("objective", ())}
    assert [(t.name, t.persistent) for t in step.tapes] == [("outer", False), ("inner", True)]


def test_two_optimizers_are_two_objectives():
    _, parts = _split('''
    def step(x, y):
        with tf.GradientTape(persistent=True) as tape:
            p = model(x, training=True)
            loss_a = mse(y, p)
            loss_b = 0.1 * other(p)
        ga = tape.gradient(loss_a, head_a.trainable_variables)
        gb = tape.gradient(loss_b, head_b.trainable_variables)
        opt_a.apply_gradients(zip(ga, head_a.trainable_variables))
        opt_b.apply_gradients(zip(gb, head_b.trainable_variables))
    ''')
    assert [[parts.addends[i].expression for i in o.addends] for o in parts.objectives] == \
        [["loss_a"], ["loss_b"]]


def test_model_calls_and_their_training_flag_are_listed():
    step = read_source(textwrap.dedent(_step("""
        a = model(x, training=True)
        b = model(x)
        c = self.encoder(x, training=flag)
        loss = mse(y, a)
    """)), "step")
    calls = {(c.func_text, c.training) for c in step.model_calls}
    assert {("model", "True"), ("model", None), ("self.encoder", "flag")} <= calls


# ---------------------------------------------------------------- the instrumented copy, on numbers
class _Tape:
    def __init__(self, persistent=False):
        self.persistent = persistent

    def __enter__(self):
        return self

    def __exit__(self, *a):
        return False

    def gradient(self, target, sources):
        return [target for _ in sources]


class _Recorder:
    """What lossmap.steps.record.Recorder does, on plain numbers."""

    def __init__(self):
        self.values, self.coefs, self.targets, self.returned = {}, {}, {}, None

    def tape(self, i, factory, *a, **k):
        return factory(*a, **k)

    def gradient(self, i, tape, target, sources):
        self.targets[i] = target
        return tape.gradient(target, sources)

    def value(self, ids, v):
        for i in ids:
            self.values[i] = v
        return v

    def coef(self, i, v):
        self.coefs[i] = v
        return v

    def factor(self, ids, side, v):
        return v

    def keras_loss(self, ids, fn, *a, **k):
        return self.value(ids, fn(*a, **k))

    def losses(self, ids, v):
        return v

    def returned_value(self, v):
        self.returned = v
        return v


def _weight(parts, rec, a):
    w = a.literal
    for cid, op in a.factors:
        w = w * rec.coefs[cid] if op == "mul" else w / rec.coefs[cid]
    return w


def _random_expression(rng, leaves, depth=0):
    """A random sum of weighted terms: the grammar the property test draws from."""
    if depth > 2 or rng.random() < 0.3:
        leaf = rng.choice(leaves)
        coef = rng.choice(["", "0.5 * ", "lam * ", "self.alpha * ", "-", "2 * "])
        tail = rng.choice(["", "", " / 4", " / lam"])
        return f"{coef}{leaf}{tail}"
    op = rng.choice([" + ", " - "])
    left, right = _random_expression(rng, leaves, depth + 1), _random_expression(rng, leaves, depth + 1)
    form = rng.choice(["{l}{op}{r}", "({l}{op}{r})", "0.25 * ({l}{op}{r})", "tf.add_n([{l}, {r}])"])
    return form.format(l=left, op=op, r=right)


@pytest.mark.parametrize("seed", range(60))
def test_property_the_addends_add_up_to_what_is_differentiated(seed):
    """For random sums of weighted terms (+, -, numbers, names, self attributes, parentheses,
    add_n, `+=` chains), sum(weight x value) over the addends equals the differentiated target,
    and the instrumented copy computes exactly what the original computes."""
    rng = random.Random(seed)
    leaves = ["l0", "l1", "l2", "f(x)"]
    lines = [f"l{i} = f(x) * {i + 1}" for i in range(3)]
    lines.append(f"loss = {_random_expression(rng, leaves)}")
    for _ in range(rng.randint(0, 2)):
        lines.append(f"loss {rng.choice(['+=', '-='])} {_random_expression(rng, leaves, 2)}")
    src = textwrap.dedent('''
    def train_step(self, data):
        x, y = data
        with tf.GradientTape() as tape:
            {body}
        grads = tape.gradient(loss, self.trainable_variables)
        self.optimizer.apply_gradients(zip(grads, self.trainable_variables))
        return loss
    ''').replace("{body}", "\n        ".join(lines))
    namespace = {"tf": type("tf", (), {"GradientTape": _Tape, "add_n": staticmethod(lambda xs: sum(xs))}),
                 "f": lambda x: x * 1.5 + 0.25, "lam": 3.0}
    exec(compile(src, "<generated>", "exec"), namespace)
    original = namespace["train_step"]
    step = read_source(src, "train_step")
    parts = split(step)
    rec = _Recorder()
    copy = build(original, step, rewrite(step, parts), rec)
    model = type("M", (), {"alpha": 0.7, "trainable_variables": [1], "optimizer": type(
        "O", (), {"apply_gradients": lambda self, pairs: list(pairs)})()})()
    expected = original(model, (2.0, 0.0))
    got = copy(model, (2.0, 0.0))
    assert got == expected
    total = math.fsum(_weight(parts, rec, a) * rec.values[a.id] for a in parts.addends)
    assert total == pytest.approx(rec.targets[0], rel=1e-12, abs=1e-12), src


@pytest.mark.parametrize("body, call_line", [
    ("""
     loss, variables = super().stateless_compute_loss(tv, ntv, mv, x=x, y=y, y_pred=y_pred)
     return loss + 0.2 * penalty, variables
     """, 3),
    ("""
     out = self.stateless_compute_loss(tv, ntv, mv, x=x, y=y, y_pred=y_pred)
     return out[0] + 0.2 * penalty, out[1]
     """, 3),
    ("""
     return self.stateless_compute_loss(
         tv, ntv, mv, x=x, y=y,
         y_pred=y_pred)[0] + 0.2 * penalty, ntv
     """, 3),
])
def test_the_loss_of_a_pair_returning_keras_method_is_a_keras_call(body, call_line):
    """`stateless_compute_loss` returns (loss, variables): the loss, wherever the code takes it from the pair,
    is the Keras call (expanded into Keras's terms at run time), shown on one line; the rest stays custom."""
    from lossmap.steps.split import split_returns

    src = "def stateless_compute_loss(self, tv, ntv, mv, x=None, y=None, y_pred=None):\n" \
          "    penalty = ops.mean(y_pred)\n" + textwrap.indent(textwrap.dedent(body).strip(), "    ") + "\n"
    step = read_source(src, "stateless_compute_loss")
    parts = split_returns(step, first=True)
    keras_call, penalty = parts.addends
    assert keras_call.kind == "keras_loss" and keras_call.keras_method == "stateless_compute_loss"
    assert keras_call.value_line == call_line and "\n" not in keras_call.expression
    assert keras_call.expression.endswith("stateless_compute_loss(tv, ntv, mv, x=x, y=y, y_pred=y_pred)")
    assert (penalty.kind, penalty.expression, penalty.literal) == ("custom", "0.2 * penalty", 0.2)


def test_a_pair_taken_apart_in_a_branch_stays_one_custom_term():
    from lossmap.steps.split import split_returns

    src = textwrap.dedent("""
    def stateless_compute_loss(self, tv, ntv, mv, x=None, y=None, y_pred=None):
        if flag:
            out = self.stateless_compute_loss(tv, ntv, mv, x=x, y=y, y_pred=y_pred)
        return out[0], out[1]
    """)
    (only,) = split_returns(read_source(src, "stateless_compute_loss"), first=True).addends
    assert only.kind == "custom" and only.expression == "out[0]"
