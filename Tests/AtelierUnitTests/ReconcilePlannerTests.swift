import Testing

@testable import AtelierManager

@Suite struct ReconcilePlannerTests {
  @Test func adoptsLiveVMsAndMarksDeadOnes() {
    let actions = ReconcilePlanner.plan(
      rows: [
        RowState(id: "aaaaaaaaaaaa", status: "running"),
        RowState(id: "bbbbbbbbbbbb", status: "running"),
      ],
      liveVMs: ["aaaaaaaaaaaa": 100], volumes: ["sandbox-aaaaaaaaaaaa", "sandbox-bbbbbbbbbbbb"],
      runtimeDirectories: ["aaaaaaaaaaaa", "bbbbbbbbbbbb"])
    #expect(
      actions == [
        .adopt(id: "aaaaaaaaaaaa"),
        .markError(id: "bbbbbbbbbbbb", reason: "the VM process is gone"),
      ])
  }

  @Test func abandonsInterruptedCreatesButNotOnesInFlight() {
    let rows = [
      RowState(id: "cccccccccccc", status: "creating"),
      RowState(id: "dddddddddddd", status: "creating"),
    ]
    let actions = ReconcilePlanner.plan(
      rows: rows, liveVMs: ["cccccccccccc": 7, "dddddddddddd": 8],
      volumes: ["sandbox-cccccccccccc", "sandbox-dddddddddddd"], runtimeDirectories: [],
      inFlight: ["dddddddddddd"])
    #expect(actions == [.abandonCreate(id: "cccccccccccc")])
  }

  @Test func finishesInterruptedStopsButNotOnesInProgress() {
    let actions = ReconcilePlanner.plan(
      rows: [
        RowState(id: "iiiiiiiiiiii", status: "stopping"),
        RowState(id: "jjjjjjjjjjjj", status: "stopping"),
        RowState(id: "kkkkkkkkkkkk", status: "stopping"),
      ],
      liveVMs: ["iiiiiiiiiiii": 9, "kkkkkkkkkkkk": 11],
      volumes: ["sandbox-iiiiiiiiiiii", "sandbox-jjjjjjjjjjjj", "sandbox-kkkkkkkkkkkk"],
      runtimeDirectories: ["iiiiiiiiiiii", "jjjjjjjjjjjj", "kkkkkkkkkkkk"],
      inFlight: ["kkkkkkkkkkkk"])
    #expect(
      actions == [
        .finishStop(id: "iiiiiiiiiiii", pid: 9), .finishStop(id: "jjjjjjjjjjjj", pid: nil),
      ])
  }

  @Test func removesOrphansNoRowOwns() {
    let actions = ReconcilePlanner.plan(
      rows: [RowState(id: "eeeeeeeeeeee", status: "stopped")],
      liveVMs: ["ffffffffffff": 42, "eeeeeeeeeeee": 43],
      volumes: ["sandbox-eeeeeeeeeeee", "sandbox-ffffffffffff", "snapshot-xyz"],
      runtimeDirectories: ["eeeeeeeeeeee", "ffffffffffff"])
    #expect(
      actions == [
        .killOrphanVM(id: "eeeeeeeeeeee", pid: 43), .killOrphanVM(id: "ffffffffffff", pid: 42),
        .removeOrphanVolume(name: "sandbox-ffffffffffff"),
        .removeOrphanRuntimeDirectory(id: "ffffffffffff"),
      ])
  }

  @Test func leavesAConsistentHostAlone() {
    let actions = ReconcilePlanner.plan(
      rows: [
        RowState(id: "gggggggggggg", status: "running"),
        RowState(id: "hhhhhhhhhhhh", status: "error"),
      ],
      liveVMs: ["gggggggggggg": 5], volumes: ["sandbox-gggggggggggg", "sandbox-hhhhhhhhhhhh"],
      runtimeDirectories: ["gggggggggggg", "hhhhhhhhhhhh"])
    #expect(actions == [.adopt(id: "gggggggggggg")])
  }
}
