//! What every command-line example does around its work: parse the arguments, run, and exit with
//! status 2 and the usage after a bad argument (only the usage for `--help`, whose parse error is
//! empty) or with status 1 and the error when the run fails.

pub fn main_with<A, E: std::fmt::Display>(
    usage: &str,
    parse: impl FnOnce() -> Result<A, String>,
    run: impl FnOnce(A) -> Result<(), E>,
) {
    let args = match parse() {
        Ok(a) => a,
        Err(e) => {
            if !e.is_empty() {
                eprintln!("error: {e}");
            }
            eprintln!("{usage}");
            std::process::exit(2);
        }
    };
    if let Err(e) = run(args) {
        eprintln!("error: {e}");
        std::process::exit(1);
    }
}
