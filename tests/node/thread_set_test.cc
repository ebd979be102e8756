// The hand-off links' thread owner: every thread it starts is joined, finished ones by a later
// Start and the rest by its destructor, which waits for their tasks.
#include "node/thread_set.h"

#include <gtest/gtest.h>

#include <atomic>
#include <memory>

#include "absl/synchronization/notification.h"

namespace strata {
namespace {

TEST(ThreadSetTest, TheDestructorWaitsForEveryTask) {
  std::atomic<int> ran{0};
  absl::Notification release;
  {
    node::ThreadSet threads;
    for (int i = 0; i < 8; ++i) threads.Start([&] { ran++; });
    threads.Start([&] {
      release.WaitForNotification();
      ran++;
    });
    release.Notify();
  }
  EXPECT_EQ(ran.load(), 9);
}

TEST(ThreadSetTest, ManyStartsLoseNoTaskAndReleaseWhatTasksHold) {
  std::atomic<int> ran{0};
  auto held = std::make_shared<int>(7);
  std::weak_ptr<int> weak = held;
  {
    node::ThreadSet threads;
    threads.Start([held = std::move(held), &ran] { ran += *held; });
    // Each Start also joins the threads that finished meanwhile.
    for (int i = 0; i < 32; ++i) threads.Start([&] { ran++; });
  }
  EXPECT_EQ(ran.load(), 39);
  EXPECT_TRUE(weak.expired());
}

}  // namespace
}  // namespace strata
