//! Rebuilds the crate when a migration is added: `sqlx::migrate!` embeds
//! the `migrations/` folders at compile time, and cargo does not otherwise
//! know a new file there changes the build.

fn main() {
    println!("cargo:rerun-if-changed=migrations");
}
