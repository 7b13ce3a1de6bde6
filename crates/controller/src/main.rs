//! Entry point of the `commit-status-controller` binary.

use controller::ops::args::{Args, Command};

fn main() -> std::process::ExitCode {
    let args = Args::parse_go();
    if let Some(Command::Crd(crd)) = &args.command {
        return match controller::kube::crd_yaml(crd.api_group) {
            Ok(text) => {
                print!("{text}");
                std::process::ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("error: {e}");
                std::process::ExitCode::FAILURE
            }
        };
    }
    let report = |r: anyhow::Result<controller::ops::cli::Report>| match r {
        Ok(r) => {
            print!("{}", r.text);
            if r.ok {
                std::process::ExitCode::SUCCESS
            } else {
                std::process::ExitCode::FAILURE
            }
        }
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::from(2)
        }
    };
    let block_on = |f: std::pin::Pin<
        Box<dyn std::future::Future<Output = anyhow::Result<controller::ops::cli::Report>>>,
    >| {
        match tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
        {
            Ok(rt) => rt.block_on(f),
            Err(e) => Err(e.into()),
        }
    };
    match args.command.clone() {
        Some(Command::Validate(cmd)) => return report(Ok(controller::ops::cli::validate(cmd))),
        Some(Command::Explain(cmd)) => {
            return report(block_on(Box::pin(controller::ops::cli::explain(cmd))));
        }
        Some(Command::SendEvent(cmd)) => {
            return report(block_on(Box::pin(controller::ops::cli::send_event(cmd))));
        }
        _ => {}
    }
    if let Some(Command::Deliveries(cmd)) = args.command {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build();
        let result = match runtime {
            Ok(rt) => rt.block_on(controller::ops::history::run(cmd)),
            Err(e) => Err(e.into()),
        };
        return match result {
            Ok(text) => {
                print!("{text}");
                std::process::ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("error: {e:#}");
                std::process::ExitCode::FAILURE
            }
        };
    }
    if let Err(e) = controller::ops::telemetry::init(&args.log_level, args.log_encoding) {
        eprintln!("error: {e}");
        return std::process::ExitCode::from(2);
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            tracing::error!(error = %e, "cannot start the async runtime");
            return std::process::ExitCode::FAILURE;
        }
    };
    match runtime.block_on(controller::app::run(args)) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = format!("{e:#}"), "exiting");
            std::process::ExitCode::FAILURE
        }
    }
}
