# Export a two-expert mixture-of-experts data set and mixtools' hmeEM fit on it, as test fixtures for
# emjax's HierarchicalMoE (issue 19).
#
# Run once, from the repository root:
#
#     Rscript --vanilla benchmarks/r/export_hme_fixture.R
#
# Needs R with the packages mixtools and jsonlite. Writes
#
#   tests/fixtures/hme_mixtools.csv   x, y, z (500 rows, simulated here with set.seed(2019))
#   tests/fixtures/r_hme_fit.json     hmeEM's fit on it (set.seed(1)), with the R and package versions
#
# The model mixtools' hmeEM(y, x, k = 2) fits (read from its source, mixtools 2.0.0): with
# addintercept = TRUE it prepends a column of ones to x, so both the gate and the experts see (1, x):
#   P(z = 1 | x) = inv.logit(w0 + w1 x)          (its Newton step hard-codes one covariate: x[, 2])
#   y | x, z = j ~ N(beta0_j + beta1_j x, sigma_j^2)
# Its gate M-step is an inner Newton-type loop stopped when sum |w change| <= 0.002, so it is a
# generalised EM (on these data it never meets its own stop, a log-likelihood change under 1e-8, and
# runs its default maxit = 10000 iterations: "converged" is false); its log-likelihood is the full Gaussian one (the log sqrt(2 pi) terms included).
#
# Numbers are written with as few significant digits as read back exactly (15, else 17), and the
# script checks that the CSV file reads back to the same data before it fits.

suppressPackageStartupMessages(library(mixtools))

source(file.path("benchmarks", "r", "fixture_io.R"))  # out_dir, exact_strings, write_fixture

# The truth: gate P(z = 1 | x) = inv.logit(0.5 + 2.5 x); expert 1: y = 1 + 2 x + N(0, 0.5^2),
# expert 2: y = -1 - 1.5 x + N(0, 0.8^2); x ~ N(0, 1); n = 500.
n <- 500L
truth <- list(w = c(0.5, 2.5), beta = cbind(c(1, 2), c(-1, -1.5)), sigma = c(0.5, 0.8))
set.seed(2019)
x <- rnorm(n)
z <- ifelse(runif(n) < 1 / (1 + exp(-(truth$w[1] + truth$w[2] * x))), 1L, 2L)
mean_y <- ifelse(z == 1L, truth$beta[1, 1] + truth$beta[2, 1] * x, truth$beta[1, 2] + truth$beta[2, 2] * x)
y <- mean_y + rnorm(n) * truth$sigma[z]
data <- write_fixture(data.frame(x = x, y = y, z = z), "hme_mixtools.csv")

set.seed(1)
output <- capture.output(
  timing <- system.time(fit <- hmeEM(data$y, data$x, k = 2))
)

reference <- list(
  r_version = R.version.string,
  packages = list(
    mixtools = as.character(packageVersion("mixtools")),
    jsonlite = as.character(packageVersion("jsonlite"))
  ),
  data = "tests/fixtures/hme_mixtools.csv",
  simulation = paste("set.seed(2019); x <- rnorm(500); z = 1 with probability inv.logit(0.5 + 2.5 x), else 2;",
                     "y = 1 + 2 x + N(0, 0.5^2) (z = 1) or -1 - 1.5 x + N(0, 0.8^2) (z = 2)"),
  truth = list(w = truth$w, beta = unname(lapply(1:2, function(j) truth$beta[, j])), sigma = truth$sigma),
  call = "set.seed(1); hmeEM(y, x, k = 2)",
  model = paste("gate P(comp 1 | x) = inv.logit(w[1] + w[2] x); expert j: y ~ N(beta[[j]][1] + beta[[j]][2] x,",
                "sigma[j]^2); loglik: the full Gaussian log-likelihood (sum over rows)"),
  n = n,
  k = 2L,
  loglik = fit$loglik,
  iterations = length(fit$all.loglik) - 1L,
  converged = length(fit$all.loglik) - 1L < 10000L,
  # the first iteration whose log-likelihood is within 1e-6 (1e-3) of the final one (all.loglik[1] is the start)
  iterations_to_final_1e6 = which(fit$all.loglik >= fit$loglik - 1e-6)[1] - 1L,
  iterations_to_final_1e3 = which(fit$all.loglik >= fit$loglik - 1e-3)[1] - 1L,
  loglik_trace_at = list(iteration = c(10L, 100L, 1000L),
                         loglik = fit$all.loglik[c(10L, 100L, 1000L) + 1L]),
  restarts = fit$restarts,
  w = as.numeric(fit$w),
  beta = unname(lapply(1:2, function(j) as.numeric(fit$beta[, j]))),
  sigma = as.numeric(fit$sigma),
  elapsed_seconds = as.numeric(timing[["elapsed"]]),
  console = output
)
jsonlite::write_json(reference, file.path(out_dir, "r_hme_fit.json"),
                     auto_unbox = TRUE, digits = NA, pretty = TRUE)
cat(sprintf("hmeEM: loglik %.10f after %d iterations (%d restarts) in %.3f s\n",
            fit$loglik, length(fit$all.loglik) - 1L, fit$restarts, timing[["elapsed"]]))
