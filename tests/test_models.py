"""Image score networks (NCSN++, DDPM++): shapes and sizes of every config, building blocks against
independent references (scipy's upfirdn, numpy attention, hand-counted parameters), real forward passes,
dropout, a few training steps, and config errors that name their field."""
import importlib

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import scipy.signal

from hold_jax import models
from hold_jax.models import layers
from hold_jax.models import ncsnpp
from hold_jax.models import resampling

CONFIGS = ("cifar10", "cifar10:local", "celebahq256", "celebahq256:local", "digits", "digits:local")

# Parameter counts for order 3 (9 or 3 input channels). For comparison, score_sde's CIFAR-10 networks
# (3 input channels) as built here: NCSN++ cont. deep (8 blocks) 107,586,947, NCSN++ 4 blocks 62,758,787,
# DDPM++ cont. (4 blocks, sinusoidal) 61,804,419; the paper's "deep" models are ~108M.
EXPECTED_PARAMS = {
    "cifar10": 107_600_771,
    "cifar10:local": 192_547,
    "celebahq256": 67_758_851,
    "celebahq256:local": 192_547,
    "digits": 689_249,
    "digits:local": 173_873,
}


def get_config(name):
  module, _, variant = name.partition(":")
  return importlib.import_module(f"hold_jax.configs.{module}").get_config(variant)


def data_shape(config):
  return (config.data.image_size, config.data.image_size, config.data.num_channels)


def count(params):
  return sum(int(np.prod(leaf.shape)) for leaf in jax.tree.leaves(params))


def inputs(key, config, order, batch=2):
  """A batch u (batch, order, H, W, C) and times t (batch,) in [1e-3, 1], float32."""
  u_key, t_key = jax.random.split(key)
  u = jax.random.normal(u_key, (batch, order, *data_shape(config)), jnp.float32)
  t = jax.random.uniform(t_key, (batch,), jnp.float32, 1e-3, 1.0)
  return u, t


def init_key(seed):
  """An rbg key: the same initial distributions as the default threefry key, and on CPU the init of a
  network compiles in half the time."""
  return jax.random.key(seed, impl="rbg")


def quick_compile(function, *args):
  """`function` compiled for `args` without XLA's backend optimisations: these programs run a few times, and
  on CPU the optimisations cost more compile time (about half of it) than they save."""
  return jax.jit(function).lower(*args).compile({"xla_backend_optimization_level": 0})


@pytest.mark.parametrize("name", CONFIGS)
def test_every_config_gives_the_output_shape_and_size(name, record_property):
  config = get_config(name)
  height, width, channels = data_shape(config)
  model = models.create_model(config.model, data_shape(config))
  sizes = {}
  for order in (1, 2, 3):
    u = jax.ShapeDtypeStruct((2, order, height, width, channels), jnp.float32)
    t = jax.ShapeDtypeStruct((2,), jnp.float32)
    output, variables = jax.eval_shape(lambda u, t: model.init_with_output(jax.random.key(0), u, t), u, t)
    assert output.shape == (2, height, width, channels) and output.dtype == jnp.float32
    sizes[order] = count(variables["params"])
  # check_config's list of GroupNorm widths (for its nf error) is the list the network builds.
  norm_widths = {leaf.shape[0] for path, leaf in jax.tree_util.tree_flatten_with_path(variables["params"])[0]
                 if "GroupNorm" in jax.tree_util.keystr(path) and jax.tree_util.keystr(path).endswith("['scale']")}
  assert norm_widths == ncsnpp.group_norm_widths(config.model.nf, config.model.ch_mult, config.model.num_res_blocks)
  print(f"{name}: {sizes[3]:,} parameters (order 3)")
  record_property("parameters_order_3", sizes[3])
  assert sizes[3] == EXPECTED_PARAMS[name]
  # Each extra block adds C input channels, read by the first conv and, with the input pyramid, by its
  # first downsampling conv (nf * ch_mult[0] outputs): 3x3 weights each, no other parameter changes.
  readers = config.model.nf + (config.model.nf * config.model.ch_mult[0]
                               if config.model.progressive_input == "residual" else 0)
  assert sizes[2] - sizes[1] == sizes[3] - sizes[2] == channels * 9 * readers


def test_blocks_have_the_hand_counted_parameters():
  def size(module, *args):
    return count(jax.eval_shape(lambda: module.init(jax.random.key(0), *args))["params"])

  x, temb = jnp.zeros((1, 8, 8, 128)), jnp.zeros((1, 512))
  conv = lambda cin, cout, k=3: k * k * cin * cout + cout
  dense = lambda cin, cout: cin * cout + cout
  norm = lambda c: 2 * c
  # GN, conv 128->256, time Dense 512->256, GN, conv 256->256, skip 1x1 conv 128->256.
  biggan = norm(128) + conv(128, 256) + dense(512, 256) + norm(256) + conv(256, 256) + conv(128, 256, 1)
  assert size(layers.ResnetBlockBigGAN(256), x, temb) == biggan
  assert size(layers.ResnetBlockBigGAN(down=True), x, temb) == (
      norm(128) + conv(128, 128) + dense(512, 128) + norm(128) + conv(128, 128) + conv(128, 128, 1))
  # As BigGAN, with a NIN skip; no skip layer at all when the width stays.
  assert size(layers.ResnetBlockDDPM(256), x, temb) == biggan
  assert size(layers.ResnetBlockDDPM(), x, temb) == (
      norm(128) + conv(128, 128) + dense(512, 128) + norm(128) + conv(128, 128))
  assert size(layers.AttentionBlock(), x) == norm(128) + 4 * dense(128, 128)
  assert size(layers.TimeEmbedding(128, "fourier"), jnp.ones((1,))) == dense(256, 512) + dense(512, 512)
  assert size(layers.TimeEmbedding(128, "sinusoidal"), jnp.ones((1,))) == dense(128, 512) + dense(512, 512)


def test_blocks_are_stacked_as_channels_block_major():
  u = jnp.arange(2 * 3 * 4 * 4 * 5).reshape(2, 3, 4, 4, 5)
  stacked = ncsnpp.stack_blocks(u)
  assert stacked.shape == (2, 4, 4, 15)
  for block in range(3):
    for channel in range(5):
      np.testing.assert_array_equal(stacked[..., block * 5 + channel], u[:, block, ..., channel])


def reference_fir(image, up=1, down=1):
  """upfirdn along both axes with scipy, cropped as StyleGAN2's padding does; image (H, W)."""
  taps = np.array(resampling.FIR_KERNEL, float) / sum(resampling.FIR_KERNEL) * up
  full = scipy.signal.upfirdn(taps, scipy.signal.upfirdn(taps, image, up, axis=0), up, axis=1)
  # Full convolution; with pad0 = (p + 1) // 2 + up - 1 on a 4-tap kernel, output pixel i is full[i + 1]
  # (up 2) and full[2 i + 2] (down 2).
  if up == 2:
    return full[1:1 + 2 * image.shape[0], 1:1 + 2 * image.shape[1]]
  return full[2:2 + image.shape[0]:down, 2:2 + image.shape[1]:down]


def test_fir_resampling_matches_scipy_upfirdn():
  images = np.random.default_rng(0).standard_normal((2, 8, 6, 3)).astype(np.float32)  # float32, as models run
  up = np.asarray(resampling.upsample_fir(jnp.asarray(images)))
  down = np.asarray(resampling.downsample_fir(jnp.asarray(images)))
  assert up.shape == (2, 16, 12, 3) and down.shape == (2, 4, 3, 3) and up.dtype == np.float32
  # A pixel is a sum of at most 16 products with dyadic weights of total magnitude 1: 16 roundings of 2^-24
  # relative to max |x| at most (the reference is float64 on the same float32 inputs). A misplaced tap is O(1).
  tolerance = 16 * 2.0**-24 * np.abs(images).max()
  for b in range(2):
    for c in range(3):
      image = images[b, ..., c].astype(np.float64)
      np.testing.assert_allclose(up[b, ..., c], reference_fir(image, up=2), rtol=0, atol=tolerance)
      np.testing.assert_allclose(down[b, ..., c], reference_fir(image, down=2), rtol=0, atol=tolerance)


def test_resampling_keeps_constants():
  constant = jnp.full((1, 8, 8, 2), 3.0)
  # FIR: exact in the interior; the zeros beyond the image damp only the outermost row and column.
  np.testing.assert_allclose(resampling.upsample_fir(constant)[:, 1:-1, 1:-1], 3.0, rtol=1e-12)
  np.testing.assert_allclose(resampling.downsample_fir(constant)[:, 1:-1, 1:-1], 3.0, rtol=1e-12)
  assert float(resampling.upsample_fir(constant)[0, 0, 4, 0]) == pytest.approx(3.0 * 0.75)
  image = jnp.asarray(np.random.default_rng(1).standard_normal((1, 4, 4, 2)))
  np.testing.assert_allclose(resampling.downsample_mean(resampling.upsample_nearest(image)), image, rtol=1e-12)


def test_fused_fir_convs_with_identity_kernels_are_the_plain_filters():
  image = jnp.asarray(np.random.default_rng(2).standard_normal((1, 8, 8, 3)))
  identity = np.zeros((3, 3, 3, 3))
  identity[1, 1] = np.eye(3)  # the centre tap copies every channel
  bias = jnp.asarray([0.5, -1.0, 2.0])
  for module, plain in ((layers.FIRUpsampleConv(3), resampling.upsample_fir),
                        (layers.FIRDownsampleConv(3), resampling.downsample_fir)):
    params = jax.eval_shape(module.init, jax.random.key(0), image)["params"]
    params = jax.tree.map(lambda leaf: jnp.asarray(identity) if len(leaf.shape) == 4 else bias, params)
    np.testing.assert_allclose(jax.jit(module.apply)({"params": params}, image), plain(image) + bias, atol=1e-12)


def numpy_attention(x, params, skip_rescale):
  """Direct self-attention of x (B, H, W, C) with the AttentionBlock's parameters."""
  batch, height, width, channels = x.shape
  groups = min(channels // 4, 32)
  grouped = x.reshape(batch, height * width, groups, channels // groups)
  mean = grouped.mean(axis=(1, 3), keepdims=True)
  var = grouped.var(axis=(1, 3), keepdims=True)
  normed = ((grouped - mean) / np.sqrt(var + 1e-6)).reshape(batch, height * width, channels)
  normed = normed * params["GroupNorm_0"]["scale"] + params["GroupNorm_0"]["bias"]
  linear = lambda name, a: a @ np.asarray(params[name]["kernel"]) + np.asarray(params[name]["bias"])
  query, key, value = linear("Dense_0", normed), linear("Dense_1", normed), linear("Dense_2", normed)
  out = np.empty_like(value)
  for b in range(batch):
    logits = query[b] @ key[b].T / np.sqrt(channels)
    weights = np.exp(logits - logits.max(axis=1, keepdims=True))
    out[b] = (weights / weights.sum(axis=1, keepdims=True)) @ value[b]
  total = x + linear("Dense_3", out).reshape(x.shape)
  return total / np.sqrt(2) if skip_rescale else total


@pytest.mark.parametrize("skip_rescale", [True, False])
def test_attention_matches_numpy_softmax_attention(skip_rescale):
  x = np.random.default_rng(3).standard_normal((2, 4, 4, 8)).astype(np.float32)  # float32, as models run
  block = layers.AttentionBlock(skip_rescale=skip_rescale, init_scale=1.0)  # a nonzero output layer
  params = jax.jit(block.init)(jax.random.key(1), jnp.asarray(x))["params"]
  output = jax.jit(block.apply)({"params": params}, jnp.asarray(x))
  assert output.dtype == jnp.float32
  # The reference in float64 on the same float32 inputs and parameters. Group norm, four 8-input dense layers
  # and a 16-way softmax (which turns the logits' absolute round-off into relative error of its weights) each
  # add a few 2^-24 at their operands' scale: about 30 roundings, 2e-6 of the output's scale, all told.
  # A wrong normalisation, scale or skip is O(1e-2) or more off.
  expected = numpy_attention(x.astype(np.float64), params, skip_rescale)
  np.testing.assert_allclose(output, expected, rtol=0, atol=2e-6 * np.abs(expected).max())


def test_attention_is_equivariant_to_pixel_permutations():
  x = jnp.asarray(np.random.default_rng(4).standard_normal((1, 4, 4, 8)))
  block = layers.AttentionBlock(init_scale=1.0)
  params = jax.jit(block.init)(jax.random.key(2), x)["params"]
  permutation = np.random.default_rng(5).permutation(16)
  permute = lambda a: a.reshape(1, 16, 8)[:, permutation].reshape(1, 4, 4, 8)
  output, output_of_permuted = jax.jit(block.apply)({"params": params}, jnp.concatenate([x, permute(x)]))
  assert not np.allclose(output, x[0] / np.sqrt(2), atol=1e-3)  # the block does something
  # float32: the permuted input sums its softmax and products in another order, each side a few 2^-24 off at
  # the output's scale (see the test above); a position-dependent block is O(1) off.
  np.testing.assert_allclose(output_of_permuted[None], permute(output[None]), rtol=0,
                             atol=4e-6 * np.abs(output).max())


@pytest.fixture(scope="module")
def local_networks():
  """name -> (config, model, initial params, initial output on `inputs`) for two :local configs."""
  networks = {}
  for name in ("cifar10:local", "digits:local"):
    config = get_config(name)
    model = models.create_model(config.model, data_shape(config))
    u, t = inputs(jax.random.key(0), config, order=3)
    output, variables = quick_compile(model.init_with_output, init_key(1), u, t)(init_key(1), u, t)
    networks[name] = config, model, variables["params"], output
  return networks


@pytest.mark.parametrize("name", ["cifar10:local", "celebahq256:local", "digits:local"])
def test_local_networks_give_finite_outputs_that_start_near_zero(name, local_networks):
  config = get_config(name)
  if name == "celebahq256:local":
    # cifar10:local's network without dropout: the same parameters fit it.
    model = models.create_model(config.model, data_shape(config))
    params = local_networks["cifar10:local"][2]
    u, t = inputs(jax.random.key(0), config, order=3)
    output = quick_compile(model.apply, {"params": params}, u, t)({"params": params}, u, t)
  else:
    output = local_networks[name][3]
  assert output.shape == (2, *data_shape(config)) and output.dtype == jnp.float32
  assert np.isfinite(output).all()
  # init_scale = 0: the residual branches and the output conv start at 1e-10 variance scale, so the
  # eps prediction starts at ~1e-5 instead of ~1.
  assert 0 < float(jnp.max(jnp.abs(output))) < 1e-3


def test_dropout_is_random_in_training_only(local_networks):
  config, model, params, _ = local_networks["cifar10:local"]
  assert config.model.dropout > 0
  # Parameters away from the initial near-identity blocks, where dropout would only touch ~1e-10 branches.
  rng = np.random.default_rng(0)
  params = jax.tree.map(lambda leaf: leaf + 0.1 * rng.standard_normal(leaf.shape).astype(leaf.dtype), params)
  u, t = inputs(jax.random.key(0), config, order=3)

  def evaluation_and_training_outputs(key):
    apply = lambda train: model.apply({"params": params}, u, t, train=train, rngs={"dropout": key})
    return apply(False), apply(True)

  evaluation_and_training_outputs = quick_compile(evaluation_and_training_outputs, jax.random.key(0))
  evaluation, training = evaluation_and_training_outputs(jax.random.key(2))
  other_evaluation, other_training = evaluation_and_training_outputs(jax.random.key(3))
  np.testing.assert_array_equal(evaluation, other_evaluation)
  np.testing.assert_array_equal(training, evaluation_and_training_outputs(jax.random.key(2))[1])
  difference = lambda a, b: float(jnp.linalg.norm(a - b) / jnp.linalg.norm(b))
  assert difference(training, other_training) > 1e-3
  assert difference(training, evaluation) > 1e-3


def test_a_few_adam_steps_fit_eps_on_a_fixed_batch(local_networks):
  # cifar10:local's NCSN++ (BigGAN blocks, FIR, input pyramid, attention, dropout) on 16 x 16 images, with
  # attention at the same level: the same parameters, a quarter of the cost. DDPM++ (digits:local) is left
  # out to keep this file fast (compiling a gradient costs seconds); its forward pass is tested above.
  params = local_networks["cifar10:local"][2]
  config = get_config("cifar10:local")
  config.data.image_size, config.model.attn_resolutions = 16, (8,)
  model = models.create_model(config.model, data_shape(config))
  u, t = inputs(jax.random.key(0), config, order=3, batch=4)
  eps = jax.random.normal(jax.random.key(1), u[:, -1].shape, jnp.float32)
  optimizer = optax.adam(5e-3)

  def loss_fn(params, key):
    output = model.apply({"params": params}, u, t, train=True, rngs={"dropout": key})
    return jnp.mean((output - eps) ** 2)

  def step(params, opt_state, key):
    loss, grads = jax.value_and_grad(loss_fn)(params, key)
    updates, opt_state = optimizer.update(grads, opt_state)
    return optax.apply_updates(params, updates), opt_state, loss

  opt_state = optimizer.init(params)
  keys = jax.random.split(jax.random.key(3), 20)
  step = quick_compile(step, params, opt_state, keys[0])
  losses = []
  for key in keys:
    params, opt_state, loss = step(params, opt_state, key)
    losses.append(float(loss))
  assert losses[0] == pytest.approx(float(jnp.mean(eps**2)), rel=1e-3)  # the output starts at ~0
  assert np.isfinite(losses).all() and losses[-1] < 0.7 * losses[0], losses


def test_mlp_takes_the_common_call_signature():
  model = models.mlp.ScoreMLP(data_dim=2, width=8, depth=1)
  u, t = jax.ShapeDtypeStruct((3, 3, 2), jnp.float32), jax.ShapeDtypeStruct((3,), jnp.float32)
  params = jax.eval_shape(model.init, jax.random.key(0), u, t)["params"]
  for train in (False, True):
    assert jax.eval_shape(lambda p, u, t: model.apply({"params": p}, u, t, train=train), params, u, t).shape == (3, 2)


@pytest.mark.parametrize("field, value, shape, message", [
    ("resblock_type", "resnet", None, "model.resblock_type"),
    ("progressive_input", "input_skip", None, "model.progressive_input"),
    ("embedding", "learned", None, "model.embedding"),
    ("attn_resolutions", (16, 3), None, r"model.attn_resolutions .* \[3\]"),
    ("ch_mult", (1, 2, 2, 2, 2, 2, 2), None, "data.image_size = 32 must be divisible by 2"),
    ("nf", 36, None, "model.nf = 36"),
    ("dropout", 1.0, None, "model.dropout"),
    ("num_res_blocks", 0, None, "model.num_res_blocks"),
    ("name", "ncsnpp", (32, 32), r"model.name = 'ncsnpp' takes square images"),
    ("name", "ncsnpp", (30, 30, 3), "data.image_size = 30"),
    ("name", "unet", None, "model.name"),
])
def test_bad_values_are_named(field, value, shape, message):
  config = get_config("cifar10")
  config.model[field] = value
  with pytest.raises(ValueError, match=message):
    models.create_model(config.model, shape or data_shape(config))


def test_ddpmpp_is_ncsnpp_without_fir_and_input_pyramid():
  config = get_config("digits")
  model = models.create_model(config.model, data_shape(config))
  assert isinstance(model, ncsnpp.NCSNpp) and not model.fir and model.progressive_input == "none"
  for field, value in (("fir", True), ("progressive_input", "residual")):
    config = get_config("digits")
    config.model[field] = value
    with pytest.raises(ValueError, match=f"model.{field}"):
      models.create_model(config.model, data_shape(config))
