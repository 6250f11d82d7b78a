//! `lepus-broker`: local RabbitMQ nodes for development, tests and demos; what
//! `scripts/broker` runs. See [`lepus_testkit::cli`] for the commands.

fn main() -> std::process::ExitCode {
    lepus_testkit::cli::main()
}
