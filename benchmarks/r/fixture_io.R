# Shared by the fixture exports (benchmarks/r/export_*.R): where fixtures go, and how numbers are
# written so that they read back to exactly the same doubles. Sourced from the repository root.

out_dir <- file.path("tests", "fixtures")
if (!dir.exists(out_dir)) stop("run from the repository root (", out_dir, " not found)")

exact_strings <- function(values) {
  # The shortest of 15 or 17 significant digits that reads back to exactly the same doubles.
  for (digits in c(15, 17)) {
    text <- formatC(values, digits = digits, format = "g")
    text <- trimws(text)
    if (identical(as.numeric(text), as.numeric(values))) return(text)
  }
  stop("no exact decimal form")
}

write_fixture <- function(frame, name) {
  text <- as.data.frame(lapply(frame, exact_strings), stringsAsFactors = FALSE)
  path <- file.path(out_dir, name)
  write.csv(text, path, row.names = FALSE, quote = FALSE)
  back <- read.csv(path)
  stopifnot(identical(names(back), names(frame)))
  for (column in names(frame)) stopifnot(identical(as.numeric(back[[column]]), as.numeric(frame[[column]])))
  back
}
