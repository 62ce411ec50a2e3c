//! The `herald` command.

fn main() {
    println!("herald");
}
