//! shop: the reference order system (orders -> inventory -> notifications).

fn main() -> anyhow::Result<()> {
    anyhow::bail!("shop is not built yet: see the project's issues")
}
