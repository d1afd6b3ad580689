"""The order-n Langevin process (docs/process.md): the SDE and its parameters, the closed-form perturbation kernel
and its log-time table, exact scores of Gaussian data, and the sufficient statistic of x_0 in the state."""
