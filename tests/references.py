"""Independent references for the kernel: scipy's expm with adaptive quadrature, and mpmath at 80 digits."""
import warnings

import mpmath
import numpy as np
import scipy.integrate
import scipy.linalg


def drift(couplings, friction):
  """F from its definition in docs/process.md, written out again on purpose (not hold_jax's code)."""
  n = len(couplings) + 1
  matrix = np.zeros((n, n))
  for k, w in enumerate(couplings):
    matrix[k, k + 1], matrix[k + 1, k] = w, -w
  matrix[-1, -1] = -friction
  return matrix


def kernel_by_quadrature(drift_matrix, friction, integrated_beta):
  """Phi = expm(B F) by scipy, Q = int_0^B expm(rF) g g^T expm(rF)^T dr entry by entry by adaptive quadrature."""
  n = drift_matrix.shape[0]
  phi = scipy.linalg.expm(integrated_beta * drift_matrix)
  column = lambda r: scipy.linalg.expm(r * drift_matrix)[:, -1] * np.sqrt(2 * friction)
  noise_cov = np.zeros((n, n))
  for i in range(n):
    for j in range(i, n):
      with warnings.catch_warnings():  # quad warns when 1e-12 meets float64 round-off; 1e-9 is what we test
        warnings.simplefilter("ignore", scipy.integrate.IntegrationWarning)
        value, _ = scipy.integrate.quad(lambda r: column(r)[i] * column(r)[j], 0.0, integrated_beta,
                                        epsabs=0.0, epsrel=1e-12, limit=200)
      noise_cov[i, j] = noise_cov[j, i] = value
  return phi, noise_cov


def kernel_mpmath(drift_matrix, friction, integrated_beta, init_var, digits=80):
  """(Phi, Sigma, lower Cholesky of Sigma) by Van Loan's block exponential at `digits` decimal digits.

  At this precision the block exponential's growth and Sigma's condition number (1e19) do not matter.
  """
  mpmath.mp.dps = digits
  n = drift_matrix.shape[0]
  block = mpmath.zeros(2 * n, 2 * n)
  b = mpmath.mpf(integrated_beta)
  for i in range(n):
    for j in range(n):
      block[i, j] = -mpmath.mpf(drift_matrix[i, j]) * b
      block[n + i, n + j] = mpmath.mpf(drift_matrix[j, i]) * b
  block[n - 1, 2 * n - 1] = 2 * mpmath.mpf(friction) * b
  exp_block = mpmath.expm(block)
  phi = exp_block[n:, n:].T
  noise_cov = phi * exp_block[:n, n:]
  sigma = phi * mpmath.diag([mpmath.mpf(v) for v in init_var]) * phi.T + noise_cov
  factor = mpmath.cholesky(sigma)
  to_numpy = lambda m: np.array(m.tolist(), dtype=np.float64)
  return to_numpy(phi), to_numpy(sigma), to_numpy(factor)
