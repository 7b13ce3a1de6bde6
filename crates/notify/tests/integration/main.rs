//! Integration tests over real HTTP: the Gitea/Forgejo and Bitbucket Server exchanges against
//! testkit's contract-validating stubs, and GitHub App authentication against the GitHub stub's
//! App API, which verifies every JWT it is sent.

mod bitbucket_server;
mod gitea;
mod github_app;
mod redirects;
mod support;
