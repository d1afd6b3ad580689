"""Shared defaults; every experiment config starts from `get_config()` here and overrides what it needs."""
import ml_collections
from ml_collections import config_dict


def get_config() -> ml_collections.ConfigDict:
  config = ml_collections.ConfigDict()
  config.seed = 0

  # The forward process (hold_jax/process/sde.py, docs/process.md). Empty couplings and unset friction mean
  # critical damping with w_1 = coupling_scale: for order 3, w = (1, 2 sqrt 2), xi = 3 sqrt 3.
  config.sde = sde = ml_collections.ConfigDict()
  sde.order = 3
  sde.coupling_scale = 1.0
  sde.couplings = config_dict.placeholder(tuple)
  sde.friction = config_dict.placeholder(float)
  sde.beta_schedule = "constant"  # 'constant' (beta_0) or 'linear' (beta_0 at t = 0 to beta_1 at T)
  sde.beta_0 = 6.5
  sde.beta_1 = 6.5
  sde.T = 1.0
  # Smallest training time and end of sampling. The float32 factor L_t is accurate to 1e-5 down to
  # t = 1e-3 for orders 1-4 (order <= 3: down to 1e-5); see docs/process.md "The perturbation kernel" and tests/test_losses.py.
  sde.eps = 1e-3
  sde.init_aux_var = 0.04  # initial variance of every auxiliary block (4% of stationary, as CLD)

  # The objective (hold_jax/training/losses.py, docs/process.md).
  config.loss = loss = ml_collections.ConfigDict()
  loss.objective = "bcsm"  # 'bcsm' (condition on x_0) or 'dsm' (condition on the full initial state)
  # The network: 'denoiser' (an EDM-preconditioned denoiser of the sufficient statistic x0_gls at noise level
  # sigma_eff, any order: hold_jax/models/denoiser.py, docs/denoiser.md), or a network of the whole state whose output
  # is 'eps', the 'score' or 'mixed' (N(0, I) score + correction).
  loss.parametrization = "denoiser"
  # 'edm' (lambda = 1 / c_out^2, the denoiser's) or, for the others, 'eps' (lambda = l_t^2), 'likelihood' (xi beta)
  # or 'none'.
  loss.weighting = "edm"
  # Training noise: 'log_normal' (log sigma_eff ~ N(log_sigma_mean, log_sigma_std^2), EDM's; for a score network the
  # time with that sigma_eff, truncated to [eps, T]), 'uniform' on [eps, T] or 'log_uniform' (density ~ 1/t).
  loss.time_sampling = "log_normal"
  loss.log_sigma_mean = -1.2
  loss.log_sigma_std = 1.2
  loss.sigma_data = 0.5  # the data's standard deviation in the denoiser's preconditioning (EDM's, for [-1, 1] images)

  # Sampling (hold_jax/sampling/samplers.py, docs/samplers.md).
  config.sampling = sampling = ml_collections.ConfigDict()
  # 'lie_trotter', 'strang' (A/2, S, A/2), their '_exponential' variants (a score step that cannot overshoot
  # near eps), 'ancestral' / 'ddim' (posterior-mean steps, exact for a point mass), 'euler_maruyama', or the
  # probability-flow ODE: 'ode_heun' (2 NFE per step), 'ode_adaptive', 'gddim' (its exponential integrator in
  # posterior-mean form, hold_jax/sampling/flow_schedule.py). See hold_jax/sampling/samplers.py.
  sampling.method = "lie_trotter"
  sampling.num_steps = 100  # steps of the fixed-step methods (NFE = steps, twice that for 'ode_heun')
  sampling.grid = "quadratic"  # 'uniform', 'quadratic' or 'edm'
  sampling.rho = 7.0  # exponent of the 'edm' grid
  sampling.denoise = True  # output without the state's noise at eps (order 1: a network step; else x0_gls)
  # 'gddim': how many past x0_hat values each step extrapolates (1: the first-order step), and in which
  # time variable: 'b' (integrated beta), 'log_b' or 'log_snr' (of the data block). Order 3 in 'b' on the 'edm'
  # grid was the best gddim setting on the swiss roll for orders 1-3 (benchmarks/RESULTS.md).
  sampling.multistep_order = 3
  sampling.time_variable = "b"
  sampling.stochasticity = 0.0  # 'gddim': gDDIM's lambda, 0 the probability-flow ODE, 1 the reverse SDE
  # The posterior-mean samplers ('ancestral', 'ddim', 'gddim', and 'ode_adaptive' in 'flow') clip x0_hat to 'auto': the data's range ([-1, 1]
  # for images, the training points' range per coordinate for point data), 'none', or 'LOW:HIGH'.
  sampling.clip_x0 = "auto"
  # 'ode_adaptive': diffrax solver ('tsit5' or 'dopri5', scipy's RK45) with a PID step-size controller; every
  # sample takes its own steps, and the NFE it took is reported. score_sde's ODE sampler uses 1e-5 / 1e-5.
  sampling.ode_solver = "tsit5"
  sampling.ode_rtol = 1e-5
  sampling.ode_atol = 1e-5
  sampling.ode_max_steps = 4096  # a sample that needs more steps comes back as NaN
  # The variable the adaptive solve runs in: 'flow' (y = Psi(B_ref, B) u in log B,
  # hold_jax/sampling/flow_coordinates.py, without the stiff linear part) or 'state' (u in B).
  sampling.ode_variable = "flow"
  sampling.num_samples = 1024
  sampling.batch_size = 1024

  # --mode=eval computes eval.metrics: 'nll' (the NLL bound below), for images 'fid', 'kid', 'is', and for point
  # data 'sw1' (the sliced Wasserstein-1 distance to held-out points, hold_jax/evaluation/point_quality.py).
  config.eval = evaluation = ml_collections.ConfigDict()
  evaluation.metrics = ("nll",)
  # The checkpoint every metric reads: its step, or -1 for the newest readable one. A chosen step that is
  # absent or damaged is an error, never replaced by another step.
  evaluation.checkpoint_step = -1

  # Sample quality (hold_jax/evaluation/image_quality.py): num_samples images from config.sampling in resumable rounds
  # of round_size, num_repeats times with seeds seed, seed + 1, ... (each reported, with the mean and minimum).
  # 'sw1' draws num_samples points the same way (no rounds) against as many held-out points (eval.seed's).
  evaluation.num_samples = 50_000
  evaluation.round_size = 5_000
  evaluation.num_repeats = 1
  # 'inception': the FID Inception-v3 from the local file inception_weights (pt_inception-2015-12-05-6726825d.pth
  # of pytorch-fid / torch-fidelity, or an .npz of the same names; its SHA-256 must start with 6726825d unless
  # inception_sha256 names the file's hash); 'digits': the bundled digits classifier (no download).
  evaluation.feature_network = "inception"
  evaluation.inception_weights = ""
  evaluation.inception_sha256 = ""
  evaluation.resize = "tf1"  # 'tf1' (the TF graph's resize, what published FIDs use) or 'half_pixel'
  evaluation.reference_split = "train"  # the data split the samples are compared with
  evaluation.reference_stats = ""  # or a .npz with mu and sigma (pytorch-fid / EDM format): FID only
  evaluation.stats_cache_dir = ""  # default: <data_dir>/hold_jax_reference_stats, ~/.cache/hold_jax for digits
  evaluation.feature_batch_size = 100
  evaluation.kid_subset_size = 1000  # KID: 100 subsets of this many features (torch-fidelity's defaults)
  evaluation.is_splits = 10
  # Quality versus NFE in one job: "method:grid:num_steps" entries, e.g. ("lie_trotter:quadratic:50",
  # "strang:edm:20"), each evaluated as above with those sampling fields; workdir/eval/quality_vs_nfe_*.json
  # tabulates them. Empty: config.sampling alone.
  evaluation.sampler_sweep = ()

  # The NLL bound (hold_jax/evaluation/likelihood.py and nll_rounds.py, docs/likelihood.md): the probability-flow ODE
  # from eps to T with the data placed at eps; workdir/eval/<name>.json gets nats and, for images, bits/dim.
  evaluation.split = "test"  # image data: the split to bound (the digits have only 'train'); else unused
  # Generated 2-D data: this many fresh points. Fixed data (images, npy clouds): the first this many (-1: all).
  evaluation.num_examples = 10_000
  evaluation.batch_size = 500  # examples per device call; a multiple of the host's device count
  evaluation.seed = 0  # example k's auxiliaries, probes, dequantisation noise and point come from (seed, k)
  # Trace of the score's Jacobian: 'exact' (D Jacobian-vector products per evaluation), 'hutchinson'
  # (Rademacher probes), or 'auto': exact for point data, Hutchinson for images.
  evaluation.divergence = "auto"
  evaluation.num_probes = 1  # Hutchinson probes per example, fixed along its ODE path
  # q(aux | x) of the bound (any q gives a bound): 'kernel' (the auxiliaries' law at eps given x_0) or
  # 'initial' (their initial Gaussians, docs/likelihood.md: looser by 0.17 nats/dim for order 3 at eps = 1e-3
  # on Gaussian data, because the last block's variance has grown from 0.04 to 0.10 by eps).
  evaluation.aux_distribution = "kernel"
  evaluation.solver = "tsit5"  # adaptive diffrax solver: 'tsit5', 'dopri5' or 'bosh3'
  evaluation.ode_rtol = 1e-5  # the solver's tolerances (score_sde's RK45 uses 1e-5 for both)
  evaluation.ode_atol = 1e-5
  evaluation.max_steps = 4096  # solver steps per example; an example that needs more fails the run loudly

  # Training (hold_jax/training/train.py). The image recipe's values; toy2d.py and images.py override what differs.
  # Adam with linear warm-up from 0, then 'constant' or 'cosine' (decay to 0 at schedule_horizon); the global
  # gradient norm is clipped to grad_clip (<= 0: no clipping).
  config.optim = optim = ml_collections.ConfigDict()
  optim.learning_rate = 2e-4
  optim.warmup_steps = 5000
  optim.schedule = "constant"
  # The step where the schedule ends (the cosine reaches 0). Unset: training.num_steps when the run starts. The
  # number is recorded in workdir/config.json and kept on resume, so a later training.num_steps never changes
  # the learning rate of a step already planned; a cosine run refuses to train past it (docs/training.md).
  optim.schedule_horizon = config_dict.placeholder(int)
  optim.beta1 = 0.9
  optim.beta2 = 0.999
  optim.eps = 1e-8
  optim.grad_clip = 1.0

  # EMA of the parameters, used for sampling and evaluation; with warm-up the decay at step k is
  # min(decay, (1 + k) / (10 + k)), so early averages forget the initialisation.
  config.ema = ema = ml_collections.ConfigDict()
  ema.decay = 0.9999
  ema.warmup = True

  config.training = training = ml_collections.ConfigDict()
  training.num_steps = 1_300_000
  training.batch_size = 128  # global: split over every device of every host
  training.log_every = 100  # a progress line and TensorBoard scalars every this many steps
  training.checkpoint_every = 10_000

  # Orbax checkpoints in workdir/checkpoints: the newest `keep`, written in the background when asynchronous.
  config.checkpoint = checkpoint = ml_collections.ConfigDict()
  checkpoint.keep = 3
  checkpoint.asynchronous = True

  # Multi-process jobs (--distributed): jax.distributed's coordination-service timeouts, in seconds. A process
  # that stops sending heartbeats for heartbeat_timeout is declared dead and the others stop with a message
  # instead of hanging in a collective until the scheduler kills them; shutdown_timeout bounds the wait for
  # the others at exit; initialization_timeout bounds the wait for all processes to join at start.
  config.distributed = distributed = ml_collections.ConfigDict()
  distributed.initialization_timeout = 300
  distributed.heartbeat_timeout = 30
  distributed.shutdown_timeout = 60
  return config
