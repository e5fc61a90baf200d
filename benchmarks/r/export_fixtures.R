# Export three small real data sets and R's reference fits as test fixtures for emjax.
#
# Run once, from the repository root:
#
#     Rscript --vanilla benchmarks/r/export_fixtures.R
#
# Needs R with the packages flexmix, mixtools and jsonlite (Debian/Ubuntu:
# apt-get install r-cran-flexmix r-cran-mixtools r-cran-jsonlite). Writes
#
#   tests/fixtures/npreg.csv               flexmix's NPreg: x, yn, yp, yb, class (200 rows)
#   tests/fixtures/tonedata.csv            mixtools' tonedata: stretchratio, tuned (150 rows)
#   tests/fixtures/patent.csv              flexmix's patent: Patents, RDS, lgRD (70 rows)
#   tests/fixtures/r_reference_fits.json   R's fits on them, with the R and package versions
#
# Numbers are written with as few significant digits as read back exactly (15, else 17), and the
# script checks that the CSV files read back to the same data before it fits.

suppressPackageStartupMessages({
  library(flexmix)
  library(mixtools)
})

source(file.path("benchmarks", "r", "fixture_io.R"))  # out_dir, exact_strings, write_fixture

data("NPreg", package = "flexmix")
data("tonedata", package = "mixtools")
npreg <- write_fixture(NPreg[, c("x", "yn", "yp", "yb", "class")], "npreg.csv")
tone <- write_fixture(tonedata[, c("stretchratio", "tuned")], "tonedata.csv")
data("patent", package = "flexmix")
# Company (the firm's name, blank-padded) is left out: no fit uses it.
patents <- write_fixture(patent[, c("Patents", "RDS", "lgRD")], "patent.csv")

# flexmix: two Gaussian regressions of yn on (1, x, x^2), constant prior, best of 10 starts.
set.seed(1)
npreg_fit <- stepFlexmix(yn ~ x + I(x^2), data = npreg, k = 2, nrep = 10, verbose = FALSE)
npreg_loglik <- logLik(npreg_fit)
npreg_parameters <- parameters(npreg_fit)  # rows: coef.(Intercept), coef.x, coef.I(x^2), sigma

# mixtools: two Gaussian regressions of tuned on (1, stretchratio), constant mixing weights.
set.seed(1)
tone_fit <- regmixEM(tone$tuned, tone$stretchratio, k = 2)

# flexmix: three Poisson regressions of Patents on (1, lgRD) with a multinomial-logit concomitant
# model (gate) on (1, RDS), best of 10 starts (the model of flexmix's own ?patent example).
set.seed(1)
patent_time <- system.time(
  patent_fit <- stepFlexmix(Patents ~ lgRD, data = patents, k = 3, model = FLXMRglm(family = "poisson"),
                            concomitant = FLXPmultinom(~ RDS), nrep = 10, verbose = FALSE)
)
patent_loglik <- logLik(patent_fit)
patent_parameters <- parameters(patent_fit)  # rows: coef.(Intercept), coef.lgRD
patent_concomitant <- parameters(patent_fit, which = "concomitant")  # rows: (Intercept), RDS; column 1 is 0

reference <- list(
  r_version = R.version.string,
  packages = list(
    flexmix = as.character(packageVersion("flexmix")),
    mixtools = as.character(packageVersion("mixtools")),
    jsonlite = as.character(packageVersion("jsonlite"))
  ),
  npreg = list(
    data = "tests/fixtures/npreg.csv",
    call = "set.seed(1); m <- stepFlexmix(yn ~ x + I(x^2), data = NPreg, k = 2, nrep = 10); logLik(m)",
    n = nrow(npreg),
    k = npreg_fit@k,
    loglik = as.numeric(npreg_loglik),
    df = attr(npreg_loglik, "df"),
    iterations = npreg_fit@iter,
    converged = npreg_fit@converged,
    prior = as.numeric(npreg_fit@prior),
    coefficients = unname(lapply(seq_len(ncol(npreg_parameters)), function(j) as.numeric(npreg_parameters[1:3, j]))),
    sigma = as.numeric(npreg_parameters[4, ])
  ),
  tonedata = list(
    data = "tests/fixtures/tonedata.csv",
    call = "set.seed(1); regmixEM(tonedata$tuned, tonedata$stretchratio, k = 2)",
    n = nrow(tone),
    k = 2L,
    loglik = tone_fit$loglik,
    iterations = length(tone_fit$all.loglik) - 1L,
    lambda = as.numeric(tone_fit$lambda),
    beta = unname(lapply(seq_len(ncol(tone_fit$beta)), function(j) as.numeric(tone_fit$beta[, j]))),
    sigma = as.numeric(tone_fit$sigma)
  ),
  patent = list(
    data = "tests/fixtures/patent.csv",
    call = paste("set.seed(1); m <- stepFlexmix(Patents ~ lgRD, data = patent, k = 3,",
                 "model = FLXMRglm(family = \"poisson\"), concomitant = FLXPmultinom(~ RDS), nrep = 10); logLik(m)"),
    n = nrow(patents),
    k = patent_fit@k,
    loglik = as.numeric(patent_loglik),
    df = attr(patent_loglik, "df"),
    iterations = patent_fit@iter,
    converged = patent_fit@converged,
    prior = as.numeric(patent_fit@prior),
    coefficients = unname(lapply(seq_len(ncol(patent_parameters)), function(j) as.numeric(patent_parameters[, j]))),
    concomitant = unname(lapply(seq_len(ncol(patent_concomitant)), function(j) as.numeric(patent_concomitant[, j]))),
    elapsed_seconds = as.numeric(patent_time[["elapsed"]])
  )
)
jsonlite::write_json(reference, file.path(out_dir, "r_reference_fits.json"),
                     auto_unbox = TRUE, digits = NA, pretty = TRUE)
cat(sprintf("NPreg: flexmix logLik %.10f (df %d); tonedata: mixtools loglik %.10f\n",
            as.numeric(npreg_loglik), attr(npreg_loglik, "df"), tone_fit$loglik))
cat(sprintf("patent: flexmix logLik %.10f (df %d, K %d) in %.3f s\n",
            as.numeric(patent_loglik), attr(patent_loglik, "df"), patent_fit@k, patent_time[["elapsed"]]))
