"""The service around the one-task pipeline: the backends a running supervisor holds (`state.Service`) and the
owner's and alerts' actions over them (`operations`). Front ends (runner.api, runner.telegram) import this
package; nothing in it imports a front end."""
